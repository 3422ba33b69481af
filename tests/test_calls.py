"""The call pipeline (gateway/calls.py) on the in-process bus and SQLite: outcome and claims."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.calls import Call, Services, run_call
from gateway.claims import UNCONFIRMED
from gateway.limits import MemoryCallLimits
from gateway.outcomes import Accepted, CallOutcome, Held, Ignored, Progress, Refused, Replayed
from gateway.recent import MemoryRecentEvents
from gateway.sources import github_signature
from gateway.waiter import ResultWaiter
from shared.batch import WriteBehind
from shared.broker import MemoryBus
from shared.errors import BrokerUnavailable, RequestError
from shared.jobs import SqliteJobStore
from shared.messages import CommandEnvelope, ResultEvent, Scale, decode_command
from shared.notify_store import open_notify_store
from shared.policy import PolicyChanges
from shared.settings import Settings
from shared.store import SqliteTriggerStore
from shared.triggers import Trigger, TriggerOptions

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures" / "sources"
JSON = {"Content-Type": "application/json"}


class RefusingBus(MemoryBus):
    """An in-process bus whose broker never confirms a command (a refused or lost confirm)."""

    async def publish_command(self, envelope: CommandEnvelope) -> None:
        """Fail as the AMQP publisher does when no confirm comes."""
        raise BrokerUnavailable("no confirm within the publish timeout")


class Pipeline:
    """The pipeline's services on SQLite and the in-process bus, and the triggers' store."""

    def __init__(self, tmp_path: Path, bus: MemoryBus) -> None:
        database = f"sqlite:///{tmp_path / 'triggers.db'}"
        self.store = SqliteTriggerStore(tmp_path / "triggers.db")
        self.bus = bus
        self.recent = MemoryRecentEvents()
        self.limits = MemoryCallLimits()
        jobs = SqliteJobStore(tmp_path / "triggers.db")
        self.services = Services(
            settings=Settings(database=database),
            bus=bus,
            recent=self.recent,
            limits=self.limits,
            jobs=jobs,
            accepted=WriteBehind(jobs.record_accepted, name="test.accepted"),
            waiter=ResultWaiter(),
            holds=open_notify_store(database),
        )

    async def trigger(self, action: str = "redeploy", **fields: Any) -> Trigger:
        """A new trigger in the store."""
        policy = fields.pop("policy", None)
        trigger, _ = await self.store.create(
            cluster="demo",
            app="shop",
            action=action,  # type: ignore[arg-type]  # a test passes "redeploy" or "scale"
            service="web",
            policy=policy,
            **fields,
        )
        return trigger

    async def run(self, trigger: Trigger, **fields: Any) -> tuple[CallOutcome, Progress]:
        """Run one call through the pipeline; its outcome and what it noted on the way."""
        call = Call(
            trigger=trigger,
            method=fields.pop("method", "POST"),
            headers=fields.pop("headers", {}),
            body=fields.pop("body", b""),
            remote="127.0.0.1",
            **fields,
        )
        progress = Progress()
        return await run_call(call, self.services, progress), progress

    def published(self, action: str = "redeploy") -> list[CommandEnvelope]:
        """The commands on the action's in-process queue."""
        queue = self.bus._queues[action]  # type: ignore[index]  # an action name
        return [decode_command(body) for body, _ in list(queue._queue)]  # type: ignore[attr-defined]  # asyncio.Queue's deque

    async def key(self, key: str) -> str | None:
        """What the shared state holds for a claimed key."""
        return await self.recent.seen(key)


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    """Services on a fresh SQLite file and in-process bus."""
    made = Pipeline(tmp_path, MemoryBus())
    await made.store.start()
    await made.services.holds.start()
    await made.services.waiter.start(made.bus)
    yield made
    await made.services.holds.close()
    await made.store.close()


@pytest.fixture
async def refusing(tmp_path: Path) -> AsyncIterator[Pipeline]:
    """The same services on a bus that never confirms a command."""
    made = Pipeline(tmp_path, RefusingBus())
    await made.store.start()
    yield made
    await made.store.close()


def _idempotency(trigger: Trigger, key: str) -> str:
    return f"idempotency:{trigger.id}:{hashlib.sha256(key.encode()).hexdigest()}"


def _push(name: str = "dockerhub_push.json") -> bytes:
    return (FIXTURES / name).read_bytes()


def _registry_push() -> bytes:
    """The Docker Registry's push sample, with a tag (the sample pushes by digest only)."""
    data = json.loads(_push("distribution_push.json"))
    data["events"][0]["target"]["tag"] = "1.0"
    return json.dumps(data).encode()


async def test_a_plain_call_is_accepted_with_its_published_job(pipeline: Pipeline) -> None:
    """A redeploy call publishes one command and is Accepted with that job id."""
    trigger = await pipeline.trigger()
    outcome, progress = await pipeline.run(trigger)
    assert isinstance(outcome, Accepted)
    assert outcome.label == "accepted"
    assert [e.job_id for e in pipeline.published()] == [outcome.job_id]
    assert progress.job_id == outcome.job_id
    assert progress.correlation_id == outcome.job_id  # no X-Request-ID given


async def test_a_scale_call_carries_its_step_and_the_triggers_bounds(pipeline: Pipeline) -> None:
    """type and step make a Scale command with the trigger's replica bounds."""
    trigger = await pipeline.trigger("scale", policy=PolicyChanges(min_replicas=1, max_replicas=5))
    outcome, _ = await pipeline.run(trigger, direction="scale_out", step=2)
    assert isinstance(outcome, Accepted)
    command = outcome.envelope.command
    assert isinstance(command, Scale)
    assert (command.direction, command.step) == ("scale_out", 2)
    assert (command.min_replicas, command.max_replicas) == (1, 5)


async def test_a_scale_call_without_a_type_is_refused(pipeline: Pipeline) -> None:
    """A plain scaling call without type is Refused 400 missing_type, nothing published."""
    trigger = await pipeline.trigger("scale")
    outcome, _ = await pipeline.run(trigger, step=2)
    assert isinstance(outcome, Refused)
    assert (outcome.error.status, outcome.error.code) == (400, "missing_type")
    assert pipeline.published("scale") == []


async def test_the_correlation_id_is_the_callers_request_id(pipeline: Pipeline) -> None:
    """A well-formed X-Request-ID is the command's correlation id."""
    trigger = await pipeline.trigger()
    outcome, _ = await pipeline.run(trigger, headers={"X-Request-ID": "deploy-42"})
    assert isinstance(outcome, Accepted)
    assert outcome.envelope.correlation_id == "deploy-42"


async def test_a_disabled_trigger_is_refused_403(pipeline: Pipeline) -> None:
    """A disabled trigger's call is Refused with trigger_disabled."""
    trigger = await pipeline.trigger(policy=PolicyChanges(enabled=False))
    outcome, _ = await pipeline.run(trigger)
    assert isinstance(outcome, Refused)
    assert (outcome.error.status, outcome.error.code) == (403, "trigger_disabled")


async def test_a_disabled_trigger_drops_a_retrying_senders_event(pipeline: Pipeline) -> None:
    """The Docker Registry's push to a disabled trigger is Ignored, naming the trigger."""
    trigger = await pipeline.trigger(
        image_update=True,
        options=TriggerOptions(image="registrycluster.local/library/test"),
        policy=PolicyChanges(enabled=False),
    )
    outcome, progress = await pipeline.run(trigger, body=_registry_push(), headers=JSON)
    assert isinstance(outcome, Ignored)
    assert (outcome.reason, outcome.trigger_id) == ("trigger_disabled", trigger.id)
    assert progress.event_source == "distribution"


async def test_a_call_in_the_cooldown_is_ignored(pipeline: Pipeline) -> None:
    """Within the trigger's cooldown a call is Ignored with the time left."""
    trigger = await pipeline.trigger(policy=PolicyChanges(cooldown=60))
    first, _ = await pipeline.run(trigger)
    second, _ = await pipeline.run(trigger)
    assert isinstance(first, Accepted)
    assert isinstance(second, Ignored)
    assert second.reason == "cooldown"
    assert second.cooldown_remaining is not None
    assert 0 < second.cooldown_remaining <= 60
    assert len(pipeline.published()) == 1


async def test_the_same_image_twice_is_ignored_naming_the_first_job(pipeline: Pipeline) -> None:
    """A push of an image just deployed is Ignored duplicate_image with the earlier job."""
    trigger = await pipeline.trigger(
        image_update=True, options=TriggerOptions(image="svendowideit/testhook")
    )
    first, _ = await pipeline.run(trigger, body=_push(), headers=JSON)
    again, progress = await pipeline.run(trigger, body=_push(), headers=JSON)
    assert isinstance(first, Accepted)
    assert isinstance(again, Ignored)
    assert (again.reason, again.job_id) == ("duplicate_image", first.job_id)
    assert progress.event_source == "dockerhub"


async def test_a_push_of_another_repository_is_ignored(pipeline: Pipeline) -> None:
    """A push the trigger is not bound to is Ignored other_repository, nothing claimed."""
    trigger = await pipeline.trigger(image_update=True, options=TriggerOptions(image="acme/api"))
    outcome, _ = await pipeline.run(trigger, body=_push(), headers=JSON)
    assert isinstance(outcome, Ignored)
    assert outcome.reason == "other_repository"
    assert pipeline.published() == []


async def test_a_repeated_delivery_is_ignored(pipeline: Pipeline) -> None:
    """The same Docker Registry delivery id twice: the second is Ignored duplicate_delivery."""
    trigger = await pipeline.trigger(
        image_update=True, options=TriggerOptions(image="registrycluster.local/library/test")
    )
    body = _registry_push()
    first, _ = await pipeline.run(trigger, body=body, headers=JSON)
    again, _ = await pipeline.run(trigger, body=body, headers=JSON)
    assert isinstance(first, Accepted)
    assert isinstance(again, Ignored)
    assert again.reason == "duplicate_delivery"
    assert again.job_id == first.job_id


async def test_a_repeated_alert_is_ignored(pipeline: Pipeline) -> None:
    """A firing alert group acts once per episode; the repeat is Ignored alert_repeat."""
    trigger = await pipeline.trigger("scale")
    body = _push("alertmanager_firing.json")
    first, _ = await pipeline.run(trigger, body=body, headers=JSON, direction="scale_out", step=1)
    again, _ = await pipeline.run(trigger, body=body, headers=JSON, direction="scale_out", step=1)
    assert isinstance(first, Accepted)
    assert isinstance(again, Ignored)
    assert (again.reason, again.job_id) == ("alert_repeat", first.job_id)


async def test_a_resolve_without_its_episode_is_ignored(pipeline: Pipeline) -> None:
    """A resolve that would scale in with no scale-out on record is Ignored no_open_episode."""
    trigger = await pipeline.trigger(
        "scale", options=TriggerOptions(scale_in_on_resolve=True, step=1)
    )
    resolved = json.loads(_push("alertmanager_firing.json"))
    resolved["status"] = "resolved"
    for alert in resolved["alerts"]:
        alert["status"] = "resolved"
    outcome, _ = await pipeline.run(trigger, body=json.dumps(resolved).encode(), headers=JSON)
    assert isinstance(outcome, Ignored)
    assert outcome.reason == "no_open_episode"


async def test_an_unrecognised_body_is_refused_422(pipeline: Pipeline) -> None:
    """A body no sender sends is Refused 422 unrecognised_body."""
    trigger = await pipeline.trigger()
    outcome, _ = await pipeline.run(trigger, body=b'{"hello": 1}', headers=JSON)
    assert isinstance(outcome, Refused)
    assert (outcome.error.status, outcome.error.code) == (422, "unrecognised_body")


async def test_a_used_idempotency_key_replays_its_job(pipeline: Pipeline) -> None:
    """The same Idempotency-Key again is Replayed with the first job; nothing new is sent."""
    trigger = await pipeline.trigger()
    first, _ = await pipeline.run(trigger, idempotency_key="k-1")
    again, _ = await pipeline.run(trigger, idempotency_key="k-1")
    assert isinstance(first, Accepted)
    assert again == Replayed(first.job_id)
    assert len(pipeline.published()) == 1


async def test_claims_are_confirmed_with_the_job_on_success(pipeline: Pipeline) -> None:
    """After the broker's confirm the idempotency key names the job and the cooldown holds."""
    trigger = await pipeline.trigger(policy=PolicyChanges(cooldown=60))
    outcome, _ = await pipeline.run(trigger, idempotency_key="k-2")
    assert isinstance(outcome, Accepted)
    assert await pipeline.key(_idempotency(trigger, "k-2")) == outcome.job_id
    assert await pipeline.limits.claim_cooldown(trigger.id, 60) is not None


async def test_a_refused_call_releases_its_claims(pipeline: Pipeline) -> None:
    """Refused after its key was claimed (405): the key and the cooldown are free again."""
    trigger = await pipeline.trigger(policy=PolicyChanges(allowed_methods=["POST"], cooldown=60))
    outcome, _ = await pipeline.run(trigger, method="GET", idempotency_key="k-3")
    assert isinstance(outcome, Refused)
    assert outcome.error.code == "method_not_allowed"
    assert await pipeline.key(_idempotency(trigger, "k-3")) is None
    assert await pipeline.limits.claim_cooldown(trigger.id, 60) is None


async def test_a_refused_signed_call_keeps_its_signature_claimed(pipeline: Pipeline) -> None:
    """A timestamped signature stays claimed when the call is refused: a replay is refused 409."""
    trigger = await pipeline.trigger(
        options=TriggerOptions(signature="timestamped", signing_secret="s" * 32),
        policy=PolicyChanges(allowed_methods=["POST"]),
    )
    stamp = str(int(time.time()))
    signature = github_signature("s" * 32, f"{stamp}.".encode()).removeprefix("sha256=")
    headers = {"X-Signature": f"t={stamp},v1={signature}"}
    refused, _ = await pipeline.run(trigger, method="GET", headers=headers)
    replay, _ = await pipeline.run(trigger, method="POST", headers=headers)
    assert isinstance(refused, Refused)
    assert refused.error.code == "method_not_allowed"
    assert isinstance(replay, Refused)
    assert replay.error.code == "replayed_request"


async def test_a_failed_confirm_keeps_keys_unconfirmed_and_frees_the_cooldown(
    refusing: Pipeline,
) -> None:
    """No confirm: the outage is raised, the key says unconfirmed, the cooldown is free."""
    trigger = await refusing.trigger(policy=PolicyChanges(cooldown=60))
    progress = Progress()
    call = Call(trigger=trigger, method="POST", headers={}, body=b"", remote="127.0.0.1")
    keyed = Call(**{**call.__dict__, "idempotency_key": "k-4"})
    with pytest.raises(BrokerUnavailable):
        await run_call(keyed, refusing.services, progress)
    assert progress.job_id is not None
    assert await refusing.key(_idempotency(trigger, "k-4")) == f"{UNCONFIRMED}{progress.job_id}"
    assert await refusing.limits.claim_cooldown(trigger.id, 60) is None


async def test_a_retry_after_a_failed_confirm_publishes_the_same_job(tmp_path: Path) -> None:
    """The retry of a call whose confirm was lost publishes the same job id, once confirmed."""
    made = Pipeline(tmp_path, RefusingBus())
    await made.store.start()
    trigger = await made.trigger()
    call = Call(
        trigger=trigger, method="POST", headers={}, body=b"", remote="127.0.0.1",
        idempotency_key="k-5",
    )  # fmt: skip
    lost = Progress()
    with pytest.raises(BrokerUnavailable):
        await run_call(call, made.services, lost)
    working = Services(**{**made.services.__dict__, "bus": MemoryBus()})
    retry = Progress()
    outcome = await run_call(call, working, retry)
    await made.store.close()
    assert isinstance(outcome, Accepted)
    assert outcome.job_id == lost.job_id == retry.retry_of
    assert await made.key(_idempotency(trigger, "k-5")) == outcome.job_id


async def test_a_wait_without_results_releases_its_claims(tmp_path: Path) -> None:
    """wait=N while no results subscription: raised 503 wait_unavailable, keys released."""
    made = Pipeline(tmp_path, MemoryBus())  # the waiter is never started: not ready
    await made.store.start()
    trigger = await made.trigger()
    call = Call(
        trigger=trigger, method="POST", headers={}, body=b"", remote="127.0.0.1",
        wait=0.01, idempotency_key="k-6",
    )  # fmt: skip
    with pytest.raises(RequestError) as raised:
        await run_call(call, made.services, Progress())
    await made.store.close()
    assert (raised.value.status, raised.value.code) == (503, "wait_unavailable")
    assert await made.key(_idempotency(trigger, "k-6")) is None
    assert made.published() == []


async def test_a_wait_returns_the_jobs_result(pipeline: Pipeline) -> None:
    """wait=N: the result the worker sends back within N seconds is on the outcome."""
    trigger = await pipeline.trigger()

    async def worker() -> None:
        queue = pipeline.bus._queues["redeploy"]
        body, _ = await queue.get()
        envelope = decode_command(body)
        event = ResultEvent(
            job_id=envelope.job_id,
            trigger_id=envelope.trigger_id,
            action="redeploy",
            cluster="demo",
            app="shop",
            service="web",
            status="succeeded",
        )
        await pipeline.bus.publish_result(event, cc=envelope.reply_to)

    task = asyncio.create_task(worker())
    outcome, _ = await pipeline.run(trigger, wait=30.0)
    await task
    assert isinstance(outcome, Accepted)
    assert outcome.result is not None
    assert outcome.result.status == "succeeded"
    assert (outcome.label, outcome.waited) == ("succeeded", "succeeded")


async def test_a_call_held_for_approval_publishes_nothing(pipeline: Pipeline) -> None:
    """A trigger with approvals: Held with its job, no command on the queue, keys confirmed."""
    trigger = await pipeline.trigger(policy=PolicyChanges(approvals=1))
    outcome, _ = await pipeline.run(trigger, idempotency_key="k-7")
    assert isinstance(outcome, Held)
    assert outcome.approvals_required == 1
    assert pipeline.published() == []
    assert await pipeline.key(_idempotency(trigger, "k-7")) == outcome.job_id
    assert await pipeline.services.holds.approval(outcome.job_id) is not None
