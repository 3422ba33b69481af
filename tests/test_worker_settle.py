"""How the worker settles commands with the broker: batched acks, and the lazy `running`
notice. Observed on the real RabbitMQ: its queue counters, and the events it carries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, MutableMapping
from datetime import datetime, timedelta
from typing import Any

import aio_pika
import pytest
import structlog

from shared.broker import AmqpBus
from shared.errors import RetryableError
from shared.messages import (
    CommandEnvelope,
    JobNotice,
    Redeploy,
    ResultEvent,
    RolloutProgress,
    Target,
    new_job_id,
)
from shared.settings import Settings
from shared.topology import COMMAND_QUEUES, DEAD_QUEUE, RESULTS_EXCHANGE
from tests.support.broker import broker_list, queue_depth
from tests.support.events import job_events, rollout_sequence
from tests.support.messages import scale_command
from tests.support.waiting import eventually
from tests.support.workers import Results, WrappedOrchestrator
from workers.orchestrators.base import Change, ProgressReport
from workers.orchestrators.local import LocalOrchestrator
from workers.worker import Worker

SCALE_QUEUE = COMMAND_QUEUES["scale"]


class SelectiveOrchestrator(WrappedOrchestrator):
    """The local cluster, where chosen jobs wait at a gate of their own or fail once."""

    def __init__(self, inner: LocalOrchestrator) -> None:
        super().__init__(inner)
        self.gates: dict[str, asyncio.Event] = {}
        self.inside: set[str] = set()
        self.flaky: set[str] = set()
        self.rollout: list[dict[str, RolloutProgress]] = []

    def hold(self, *job_ids: str) -> asyncio.Event:
        """A gate the jobs wait at inside the adapter until it is set."""
        gate = asyncio.Event()
        self.gates.update(dict.fromkeys(job_ids, gate))
        return gate

    async def holding(self, count: int) -> None:
        """Wait until `count` jobs wait at their gates."""

        async def probe() -> bool | None:
            return True if len(self.inside) >= count else None

        await eventually(probe, what=f"{count} jobs inside the adapter")

    async def redeploy(
        self,
        job_id: str,
        target: Target,
        *,
        image: str | None = None,
        issued_at: datetime | None = None,
        progress: ProgressReport | None = None,
    ) -> Change:
        """Report the scripted rollout counts (`rollout`) to `progress`, then redeploy."""
        for counts in self.rollout:
            if progress is not None:
                await progress(counts)
        return await super().redeploy(
            job_id, target, image=image, issued_at=issued_at, progress=progress
        )

    async def before_change(self, job_id: str) -> None:
        """Wait at the job's gate, if it has one; fail once if it is flaky."""
        if (gate := self.gates.get(job_id)) is not None:
            self.inside.add(job_id)
            await gate.wait()
        if job_id in self.flaky:
            self.flaky.discard(job_id)
            msg = "the platform said: try again"
            raise RetryableError(msg)


@contextlib.asynccontextmanager
async def _selective_worker(
    settings: Settings, cluster: LocalOrchestrator
) -> AsyncIterator[tuple[Worker, SelectiveOrchestrator]]:
    orchestrator = SelectiveOrchestrator(cluster)
    amqp = AmqpBus.from_settings(settings, "test-settle-worker")
    await amqp.start()
    worker = Worker(settings, amqp, orchestrator)
    await worker.start()
    try:
        yield worker, orchestrator
    finally:
        for gate in orchestrator.gates.values():
            gate.set()
        await worker.stop()
        await amqp.close()


def _unacked(amqp_url: str, queue: str) -> int:
    rows = broker_list(amqp_url, "queues", "name", "messages_unacknowledged")
    return next(int(r["messages_unacknowledged"]) for r in rows if r["name"] == queue)


async def _settled(amqp_url: str, queue: str, unacked: int) -> int:
    async def probe() -> int | None:
        count = await asyncio.to_thread(_unacked, amqp_url, queue)
        return count if count == unacked else None

    return await eventually(probe, what=f"{queue} holding {unacked} unacked")


async def test_a_command_held_in_the_adapter_holds_back_no_ack_of_later_ones(
    settings: Settings, bus: AmqpBus, cluster: LocalOrchestrator, results: Results
) -> None:
    """The first of 30 commands stays in the adapter while the 29 after it finish together:
    they are acked (the queue holds exactly one unacked message, so no ack covered the held
    one); then it finishes, is acked too, and the worker goes on taking commands."""
    async with _selective_worker(settings, cluster) as (worker, orchestrator):
        held, *rest = [scale_command() for _ in range(30)]
        first = orchestrator.hold(held.job_id)
        others = orchestrator.hold(*(e.job_id for e in rest))
        for envelope in (held, *rest):
            await bus.publish_command(envelope)
        await orchestrator.holding(30)
        others.set()
        await asyncio.gather(*(results.wait_for(e.job_id) for e in rest))
        assert await _settled(settings.amqp_url, SCALE_QUEUE, unacked=1) == 1
        assert results.for_job(held.job_id) == []

        first.set()
        (event,) = await results.wait_for(held.job_id)
        assert event.status == "succeeded"
        assert await _settled(settings.amqp_url, SCALE_QUEUE, unacked=0) == 0
        # The consumer's channel survived (an ack of an unknown tag would have closed it).
        after = scale_command()
        await bus.publish_command(after)
        (later,) = await results.wait_for(after.job_id)
        assert later.after["web"].replicas == 2 + 31
        assert later.worker == worker.name
    assert await queue_depth(settings.amqp_url, SCALE_QUEUE) == 0


async def test_a_burst_of_successes_failures_and_retries_settles_each_command_once(
    settings: Settings, bus: AmqpBus, cluster: LocalOrchestrator, results: Results
) -> None:
    """Sixty commands at once, every third for a missing app (failed, dead-lettered) and
    every fifth failing once before it applies (retried through the broker): each job has
    one result, the queue ends empty with nothing unacked, the failures are dead letters."""
    async with _selective_worker(settings, cluster) as (_, orchestrator):
        envelopes = []
        for i in range(60):
            if i % 3 == 0:
                envelope = CommandEnvelope(
                    job_id=new_job_id(),
                    trigger_id="t" * 26,
                    target=Target(cluster="demo", app="gone"),
                    command=Redeploy(),
                )
            else:
                envelope = scale_command()
                if i % 5 == 0:
                    orchestrator.flaky.add(envelope.job_id)
            envelopes.append(envelope)
        for envelope in envelopes:
            await bus.publish_command(envelope)
        events = [
            (await results.wait_for(e.job_id, within=20))[0]
            for e in envelopes  # in order, each awaited: a result per job
        ]
        await _settled(settings.amqp_url, COMMAND_QUEUES["redeploy"], unacked=0)
        await _settled(settings.amqp_url, SCALE_QUEUE, unacked=0)
        # A last command after everything settled: the worker publishes results in order
        # on one channel, so a second result of any earlier job would arrive before its.
        last = scale_command()
        await bus.publish_command(last)
        await results.wait_for(last.job_id, within=20)
    assert [len(results.for_job(e.job_id)) for e in envelopes] == [1] * 60
    assert [e.status for e in events].count("failed") == 20
    retried = [e for i, e in enumerate(events) if i % 5 == 0 and i % 3 != 0]
    assert [e.attempt for e in retried] == [2] * len(retried)
    assert (await cluster.state(Target(cluster="demo", app="shop", service="web")))[
        "web"
    ].replicas == 2 + 40 + 1
    assert await queue_depth(settings.amqp_url, DEAD_QUEUE) == 20
    assert await queue_depth(settings.amqp_url, SCALE_QUEUE) == 0


async def _arrived(seen: list[ResultEvent | JobNotice], count: int) -> None:
    async def probe() -> bool | None:
        return True if len(seen) >= count else None

    await eventually(probe, what=f"{count} job events")


async def test_running_notice_only_for_a_command_that_outlasts_the_setting(
    settings: Settings, bus: AmqpBus, cluster: LocalOrchestrator, results: Results
) -> None:
    """With TRIGGERS_RUNNING_NOTICE_AFTER=0.2, a fast job goes straight to its result; one
    held in the adapter until its notice is out is announced `running` first, dated when the worker took it
    (not 0.2 s later, when the notice went out), then its result follows."""
    configured = settings.with_(running_notice_after=0.2)
    async with (
        job_events(settings.amqp_url) as seen,
        _selective_worker(configured, cluster) as (_, orchestrator),
    ):
        fast, slow = scale_command(), scale_command()
        gate = orchestrator.hold(slow.job_id)
        await bus.publish_command(fast)
        await results.wait_for(fast.job_id)
        await bus.publish_command(slow)
        await orchestrator.holding(1)
        await _arrived(seen, 2)  # the slow job's `running` notice, 0.2 s after it began
        gate.set()
        await results.wait_for(slow.job_id)
        await _arrived(seen, 3)
    assert [(e.job_id, e.status) for e in seen] == [
        (fast.job_id, "succeeded"),
        (slow.job_id, "running"),
        (slow.job_id, "succeeded"),
    ]
    notice, result = seen[1], seen[2]
    assert isinstance(notice, JobNotice)
    assert isinstance(result, ResultEvent)
    assert result.duration_ms is not None
    assert result.duration_ms >= 200
    took = result.finished_at - timedelta(milliseconds=result.duration_ms)
    assert abs((notice.at - took).total_seconds()) < 0.1


async def test_running_notice_after_zero_announces_every_command_before_applying(
    settings: Settings, bus: AmqpBus, cluster: LocalOrchestrator, results: Results
) -> None:
    """TRIGGERS_RUNNING_NOTICE_AFTER=0 keeps a `running` notice for every job, first."""
    configured = Settings.from_env({"TRIGGERS_RUNNING_NOTICE_AFTER": "0"}).running_notice_after
    assert configured == 0
    async with (
        job_events(settings.amqp_url) as seen,
        _selective_worker(settings.with_(running_notice_after=configured), cluster),
    ):
        envelope = scale_command()
        await bus.publish_command(envelope)
        await results.wait_for(envelope.job_id)
        await _arrived(seen, 2)
    assert [(e.job_id, e.status) for e in seen] == [
        (envelope.job_id, "running"),
        (envelope.job_id, "succeeded"),
    ]


@pytest.mark.unit
def test_a_negative_running_notice_delay_is_refused() -> None:
    """A negative TRIGGERS_RUNNING_NOTICE_AFTER fails at start-up, naming the variable."""
    with pytest.raises(ValueError, match="TRIGGERS_RUNNING_NOTICE_AFTER must be 0 or more"):
        Settings.from_env({"TRIGGERS_RUNNING_NOTICE_AFTER": "-1"})


async def test_rollout_progress_goes_out_when_it_changes_at_most_once_per_interval(
    settings: Settings, bus: AmqpBus, cluster: LocalOrchestrator, results: Results
) -> None:
    """A rollout reported 0/3, 0/3, 1/3, 2/3, 3/3 follows the announcement with one notice per change (not the repeat) when the interval allows; with a long interval only the announcement goes out."""

    def redeploy() -> CommandEnvelope:
        return CommandEnvelope(
            job_id=new_job_id(),
            trigger_id="t" * 26,
            target=Target(cluster="demo", app="shop"),
            command=Redeploy(),
        )

    async with (
        job_events(settings.amqp_url) as seen,
        _selective_worker(settings.with_(running_notice_after=0), cluster) as (worker, adapter),
    ):
        adapter.rollout = [{"web": RolloutProgress(updated=n, total=3)} for n in (0, 0, 1, 2, 3)]
        worker.progress_every = 0
        eager, lazy = redeploy(), redeploy()
        await bus.publish_command(eager)
        await results.wait_for(eager.job_id)
        worker.progress_every = 3600
        await bus.publish_command(lazy)
        await results.wait_for(lazy.job_id)
        await _arrived(seen, 8)
    counts, result = await rollout_sequence(seen, eager.job_id, "web")
    assert counts == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert result.status == "succeeded"
    counts, result = await rollout_sequence(seen, lazy.job_id, "web")
    assert counts == []
    assert [e.status for e in seen if e.job_id == lazy.job_id] == ["running", "succeeded"]


async def test_a_result_the_broker_refuses_for_a_while_goes_out_later_not_dead_lettered(
    settings: Settings, bus: AmqpBus, cluster: LocalOrchestrator
) -> None:
    """While a queue bound to the results refuses new messages, the broker nacks each
    result the worker publishes, as a quorum queue does while it elects a leader. The
    worker requeues the command after a pause that doubles with each delivery, so the
    queue's delivery limit (20) outlasts the refusal; once the broker takes the result,
    the command is acked: applied once, never dead-lettered."""
    refusals: list[float] = []
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        refusing = await channel.declare_queue(
            f"test.refusing-{new_job_id()[:8]}",
            auto_delete=True,
            arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
        )
        await refusing.bind(RESULTS_EXCHANGE, "#")
        envelope = scale_command()
        with structlog.testing.capture_logs() as logs:
            async with _selective_worker(settings, cluster):
                await bus.publish_command(envelope)

                async def refused(count: int) -> bool | None:
                    seen = [e for e in logs if e["event"] == "worker.result_unpublished"]
                    refusals.extend([time.monotonic()] * (len(seen) - len(refusals)))
                    return True if len(seen) >= count else None

                await eventually(lambda: refused(4), what="four refused results")
                await refusing.delete(if_unused=False, if_empty=False)

                async def answered() -> list[MutableMapping[str, Any]] | None:
                    done = [e for e in logs if e["event"] == "worker.command"]
                    return done or None

                commands = await eventually(answered, what="the command answered")
                await _settled(settings.amqp_url, SCALE_QUEUE, unacked=0)
        assert "DeliveryError" in next(
            e["error"] for e in logs if e["event"] == "worker.result_unpublished"
        )
        # Four refusals took the pauses 0.1 + 0.2 + 0.4 s at least (at once, all twenty
        # deliveries were spent within a third of a second).
        assert refusals[3] - refusals[0] >= 0.6
        assert [(c["status"], c["duplicate"]) for c in commands] == [("succeeded", True)]
    finally:
        await connection.close()
    assert await queue_depth(settings.amqp_url, DEAD_QUEUE) == 0
    assert await queue_depth(settings.amqp_url, SCALE_QUEUE) == 0
    replicas = (await cluster.state(envelope.target))["web"].replicas
    assert replicas == 2 + 1  # applied once, whatever the deliveries
