"""Poison messages and permanent failures go to the dead-letter queue, with their reason."""

from __future__ import annotations

import asyncio
import json
import subprocess

import aio_pika

from shared.broker import AmqpBus
from shared.errors import RetryableError
from shared.jobs import JobStore
from shared.messages import CommandEnvelope, Redeploy, Target, encode, new_job_id
from shared.settings import Settings
from shared.topology import COMMANDS_EXCHANGE, DEAD_QUEUE
from tests.support.broker import queue_depth
from tests.support.cli import tailing, triggers_cli
from tests.support.messages import scale_command
from tests.support.waiting import eventually
from tests.support.workers import Results, recorded
from workers.orchestrators.base import Change
from workers.orchestrators.local import LocalOrchestrator
from workers.recorder import Recorder
from workers.worker import Worker


async def _publish_raw(settings: Settings, body: bytes, routing_key: str) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(COMMANDS_EXCHANGE)
        await exchange.publish(
            aio_pika.Message(body=body, message_id="poison-1"), routing_key=routing_key
        )


async def _dead_letters(settings: Settings, count: int) -> None:
    """Wait until the dead-letter queue holds `count` messages."""

    async def there() -> bool | None:
        return True if await queue_depth(settings.amqp_url, DEAD_QUEUE) == count else None

    await eventually(there, what=f"{count} message(s) in the dead-letter queue")


def _cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [*triggers_cli(), *args], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout


async def test_poison_message_is_dead_lettered_with_its_reason_and_blocks_nothing(
    settings: Settings,
    env: dict[str, str],
    bus: AmqpBus,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """Undecodable bytes go to triggers.dead with the decode error; the next command runs."""
    await _publish_raw(settings, b"\xff{not json", "scale")
    good = scale_command(1)
    await bus.publish_command(good)
    (event,) = await results.wait_for(good.job_id)
    assert event.status == "succeeded"

    await _dead_letters(settings, 1)  # handled concurrently: maybe after the good one
    dead = json.loads(_cli(env, "dlq", "list", "--json"))  # a list is one JSON array
    assert [d["id"] for d in dead] == ["poison-1"]
    assert "undecodable command" in dead[0]["reason"]
    assert dead[0]["replayable"] is False
    # Listing leaves the message where it is; a replay keeps what cannot be replayed.
    assert await queue_depth(settings.amqp_url, DEAD_QUEUE) == 1
    outcome = json.loads(_cli(env, "dlq", "replay", "--all", "--json"))
    assert outcome == {"replayed": [], "kept": ["poison-1"], "not_found": []}
    assert "Purged 1 messages." in _cli(env, "dlq", "purge", "--yes")
    assert await queue_depth(settings.amqp_url, DEAD_QUEUE) == 0


async def test_permanent_failure_is_reported_dead_lettered_and_replayable(
    settings: Settings,
    env: dict[str, str],
    bus: AmqpBus,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """A redeploy of a missing app fails, waits in the DLQ, and succeeds once replayed after a fix."""
    envelope = CommandEnvelope(
        job_id=new_job_id(),
        trigger_id="t" * 26,
        target=Target(cluster="demo", app="blog"),
        command=Redeploy(),
    )
    await bus.publish_command(envelope)
    (failed,) = await results.wait_for(envelope.job_id)
    assert failed.status == "failed"
    assert failed.attempt == 1  # permanent: never retried

    # The worker dead-letters the command once its failed result is confirmed: after it.
    await _dead_letters(settings, 1)
    (dead,) = json.loads(_cli(env, "dlq", "list", "--json"))
    assert dead["id"] == envelope.job_id
    assert "'blog' not found" in dead["reason"]
    assert (dead["action"], dead["app"], dead["replayable"]) == ("redeploy", "blog", True)

    cluster.cluster.set_service("demo", "blog", "web", replicas=1, image="ghost:5")
    outcome = json.loads(_cli(env, "dlq", "replay", envelope.job_id, "--json"))
    assert outcome["replayed"] == [envelope.job_id]
    _, replayed = await results.wait_for(envelope.job_id, count=2)
    assert replayed.status == "succeeded"
    assert replayed.after["web"].revision == 2

    # Replaying an applied command again changes nothing.
    await _publish_raw_copy(settings, envelope)
    _, _, again = await results.wait_for(envelope.job_id, count=3)
    assert again.duplicate is True
    assert (
        cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["blog"]["services"]["web"][
            "revision"
        ]
        == 2
    )
    assert await queue_depth(settings.amqp_url, DEAD_QUEUE) == 0


async def _publish_raw_copy(settings: Settings, envelope: CommandEnvelope) -> None:
    await _publish_raw(settings, encode(envelope), envelope.action)


async def test_retryable_failures_retry_through_the_broker_then_fail_with_the_reason(
    settings: Settings,
    bus: AmqpBus,
    cluster: LocalOrchestrator,
    results: Results,
) -> None:
    """An orchestrator that always times out is tried max_attempts times, then reported failed."""

    class Down(LocalOrchestrator):
        calls = 0

        async def scale(
            self,
            job_id: str,
            target: Target,
            *,
            delta: int,
            min_replicas: int | None = None,
            max_replicas: int | None = None,
        ) -> Change:
            Down.calls += 1
            msg = "the API server did not answer within 10s"
            raise RetryableError(msg)

        async def recorded(self, job_id: str, target: Target) -> Change | None:
            # The ledger is unreachable too: the job still ends, failed, with its reason.
            msg = "the API server did not answer within 10s"
            raise RetryableError(msg)

    amqp = AmqpBus.from_settings(settings, "test-down-worker")
    await amqp.start()
    worker = Worker(settings.with_(max_attempts=3), amqp, Down(settings.local_state))
    await worker.start()
    try:
        envelope = scale_command(2)
        await bus.publish_command(envelope)
        (event,) = await results.wait_for(envelope.job_id)
    finally:
        await worker.stop()
        await amqp.close()
    assert event.status == "failed"
    assert event.attempt == 3
    assert Down.calls == 3
    assert event.error == "gave up after 3 attempts: the API server did not answer within 10s"


async def test_replayed_job_shows_its_latest_outcome_in_history_status_and_tail(
    settings: Settings,
    env: dict[str, str],
    bus: AmqpBus,
    cluster: LocalOrchestrator,
    worker: Worker,
    recorder: Recorder,
    jobs: JobStore,
    results: Results,
) -> None:
    """A failed job replayed from the DLQ that then succeeds is succeeded in history and the job API, with both attempts, and tail prints both outcomes."""
    async with tailing({**env, "COLUMNS": "300"}, "--app", "blog", "--count", "2") as tail:
        envelope = CommandEnvelope(
            job_id=new_job_id(),
            trigger_id="t" * 26,
            target=Target(cluster="demo", app="blog"),
            command=Redeploy(),
        )
        await bus.publish_command(envelope)
        failed = await recorded(jobs, envelope.job_id, "failed")
        assert failed.error is not None
        await _dead_letters(settings, 1)

        cluster.cluster.set_service("demo", "blog", "web", replicas=1, image="ghost:5")
        _cli(env, "dlq", "replay", envelope.job_id, "--json")
        job = await recorded(jobs, envelope.job_id, "succeeded")
        assert (job.error, job.attempt) == (None, 2)
        assert job.result is not None
        assert job.result.after["web"].revision == 2
        async with asyncio.timeout(30):
            out, _ = await tail.communicate()
    # One line per outcome; the failure's message wraps on its own indented line.
    lines = [
        line
        for line in out.decode().splitlines()
        if not line.startswith(" ") and "RUNNING" not in line  # a slow attempt's notice
    ]
    assert len(lines) == 2, out.decode()
    assert "failed" in lines[0].lower()
    assert "succeeded" in lines[1].lower()
    assert "application 'blog' not found" in out.decode()
