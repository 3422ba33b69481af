"""The call pipeline: an authenticated trigger call -> a typed outcome (`gateway.outcomes`).

`gateway.hook` reads the HTTP request (shape, secret, body) and hands over a `Call`;
this module decides, with no HTTP in it, in this order:

1. the caller's ``Idempotency-Key``: a key used before answers with that job (`Replayed`);
2. signatures and the body (`gateway.sources`): an event's command, or `Ignored`;
3. the parameters the trigger's action needs (a scaling call's type and step);
4. the trigger's policy (`gateway.policy`): refused, `Ignored` (a cooldown), or go ahead;
5. a held call (approvals) is stored and announced (`Held`); any other is published and
   `Accepted` once the broker confirmed it, after its result with ``wait=N``.

Every key claimed on the way (replays, de-duplication, idempotency) and the cooldown are
held by one `Reservation`: confirmed with the job id on the broker's confirm, kept as
unconfirmed when publishing failed, released on every other path. A refusal (4xx) is
returned as `Refused`; an outage (5xx) is raised, for the error middleware to answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import msgspec
import structlog

from gateway.claims import Reservation
from gateway.errors import ApiError
from gateway.limits import CallLimits
from gateway.outcomes import Accepted, CallOutcome, Held, Ignored, Progress, Refused, Replayed
from gateway.policy import admit
from gateway.recent import RecentEvents
from gateway.sources import EventCall, inspect_call
from gateway.waiter import ResultWaiter, recorded_result
from shared.batch import WriteBehind
from shared.broker import Bus
from shared.errors import RequestError
from shared.jobs import JobRecord, JobStore
from shared.messages import (
    Command,
    CommandEnvelope,
    Direction,
    JobNotice,
    Redeploy,
    ResultEvent,
    Scale,
    Source,
    Target,
    new_job_id,
    utcnow,
)
from shared.metrics import WAITING
from shared.notify_store import NotifyStore
from shared.policy import DEFAULT_APPROVAL_TIMEOUT
from shared.settings import Settings
from shared.triggers import Trigger

__all__ = ["Call", "Services", "run_call"]

log = structlog.get_logger("triggers.gateway")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# How long a call with wait=N waits at most for the results subscription to come back.
_READY_GRACE = 5.0


@dataclass(frozen=True)
class Call:
    """An authenticated call, as `gateway.hook` read it from the request."""

    trigger: Trigger
    method: str
    headers: Mapping[str, str]
    body: bytes
    remote: str
    source: str | None = None  # ``source=``: the body's sender, or "plain"
    direction: Direction | None = None
    step: int | None = None
    wait: float = 0.0
    idempotency_key: str | None = None
    secret_in_query: bool = False


@dataclass(frozen=True)
class Services:
    """What the pipeline uses: the process's settings, broker, stores and shared state."""

    settings: Settings
    bus: Bus
    recent: RecentEvents
    limits: CallLimits
    jobs: JobStore
    accepted: WriteBehind[JobRecord]
    waiter: ResultWaiter
    holds: NotifyStore


async def run_call(call: Call, services: Services, progress: Progress) -> CallOutcome:
    """What becomes of `call`; raises only an outage (the broker or the store, 5xx).

    `progress` notes the event source, job id and retried job as soon as they are known,
    so that a call that fails after them still says them in its log line.
    """
    async with Reservation(services.recent) as reservation:
        try:
            return await _run(call, services, reservation, progress)
        except RequestError as exc:
            if exc.status >= 500:
                raise
            return Refused(exc)


async def _run(
    call: Call, services: Services, reservation: Reservation, progress: Progress
) -> CallOutcome:
    replayed = await _claim_idempotency_key(call, services.settings, reservation)
    if replayed is not None:
        return replayed
    event = await inspect_call(
        call.trigger,
        call.headers,
        call.body,
        source=call.source,
        direction=call.direction,
        step=call.step,
        secret_in_query=call.secret_in_query,
        settings=services.settings,
        reservation=reservation,
        progress=progress,
    )
    if isinstance(event, Ignored):
        return event  # a valid event this trigger does not act on
    command = _command(call, event)
    ignored = await _admit(call, services.limits, event, reservation)
    if ignored is not None:
        return ignored
    envelope = _envelope(call, services, command, event, reservation.job_id(new_job_id))
    progress.job_id = envelope.job_id
    progress.retry_of = reservation.retry_of
    summary = event.summary if event else None
    if call.trigger.approvals:
        # Held for approval: nothing is published until people approve.
        return await _hold(call.trigger, services, envelope, summary, reservation)
    progress.correlation_id = envelope.correlation_id
    return await _publish(call.wait, services, envelope, summary, reservation)


async def _claim_idempotency_key(
    call: Call, settings: Settings, reservation: Reservation
) -> Replayed | None:
    """Claim the caller's key; the earlier job when the key was used before."""
    if call.idempotency_key is None:
        return None
    digest = hashlib.sha256(call.idempotency_key.encode()).hexdigest()
    key = f"idempotency:{call.trigger.id}:{digest}"
    earlier = await reservation.claim(key, settings.idempotency_window)
    if earlier is None or earlier.unconfirmed:
        return None
    if earlier.pending or earlier.job_id is None:
        raise ApiError(
            409,
            "idempotency_key_in_use",
            "a call with this Idempotency-Key is still in progress; retry in a moment",
            headers={"Retry-After": "1"},
        )
    return Replayed(earlier.job_id)


def _command(call: Call, event: EventCall | None) -> Command:
    trigger = call.trigger
    command: Command
    if event is not None:
        command = event.command
    elif trigger.action == "scale":
        if call.direction is None:
            raise ApiError(
                400, "missing_type", "a scaling trigger needs type=scale_in or type=scale_out"
            )
        if call.step is None:
            raise ApiError(
                400, "missing_step", "a scaling trigger needs step=N, a whole number from 1 to 100"
            )
        command = Scale(direction=call.direction, step=call.step)
    else:
        command = Redeploy()
    if isinstance(command, Scale):
        # The worker clamps to the bounds against the live replica count.
        command = msgspec.structs.replace(
            command, min_replicas=trigger.min_replicas, max_replicas=trigger.max_replicas
        )
    return command


async def _admit(
    call: Call, limits: CallLimits, event: EventCall | None, reservation: Reservation
) -> Ignored | None:
    """The trigger's policy; a retry of a job already sent does not claim the cooldown again."""
    trigger = call.trigger
    first = reservation.retry_of is None
    ignored = await admit(
        trigger,
        utcnow(),
        method=call.method,
        limits=limits,
        sender=event.origin.source if event else None,
        cooldown=first,
    )
    if ignored is None and first and trigger.cooldown:
        reservation.release_cooldown = partial(limits.release_cooldown, trigger.id)
    return ignored


def _correlation_id(headers: Mapping[str, str], job_id: str) -> str:
    given = headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.fullmatch(given) else job_id


def _envelope(
    call: Call, services: Services, command: Command, event: EventCall | None, job_id: str
) -> CommandEnvelope:
    trigger = call.trigger
    return CommandEnvelope(
        job_id=job_id,
        trigger_id=trigger.id,
        target=Target(
            cluster=trigger.cluster,
            app=trigger.app,
            service=trigger.service,
            namespace=trigger.namespace,
        ),
        command=command,
        source=Source(
            kind="http",
            remote=call.remote,
            user_agent=call.headers.get("User-Agent", "")[:200] or None,
            method=call.method,
            origin=event.origin if event else None,
        ),
        correlation_id=_correlation_id(call.headers, job_id),
        reply_to=services.waiter.reply_to if call.wait > 0 else None,
    )


async def _send(
    services: Services, envelope: CommandEnvelope, reservation: Reservation
) -> JobRecord:
    """Publish the command (the reservation confirms on the broker's confirm), then queue
    its `accepted` record for the history.

    The record is written behind, in batches (`shared.batch.WriteBehind`): no store round
    trip on the way to the 202. Until it is written this process answers `status_url`
    from the queue, and other gateways wait a moment for it (`gateway.jobs`). A gateway
    that dies before the write loses only that record: the recorder still writes the result.
    """
    await reservation.publish(envelope.job_id, partial(services.bus.publish_command, envelope))
    record = JobRecord.accepted(envelope)
    services.accepted.record(record)
    return record


async def _publish(
    wait: float,
    services: Services,
    envelope: CommandEnvelope,
    event: dict[str, object] | None,
    reservation: Reservation,
) -> Accepted:
    """Publish; with wait=N, also the job's result when it comes within N seconds."""
    if wait <= 0:
        record = await _send(services, envelope, reservation)
        return Accepted(envelope.job_id, envelope, record, event)
    waiter = services.waiter
    deadline = asyncio.get_running_loop().time() + wait
    # Just after a broker blip the results subscription may still be coming back: a
    # caller who said it would wait gets a little of that time for it before a 503.
    if not await waiter.until_ready(min(wait, _READY_GRACE)):
        raise ApiError(
            503,
            "wait_unavailable",
            "the gateway is not receiving results right now; retry in a few seconds",
            headers={"Retry-After": "2"},
        )
    # Expect the result before publishing: a fast worker may answer before the confirm.
    since = waiter.disconnects
    result: ResultEvent | None
    with waiter.expect(envelope.job_id) as future:
        record = await _send(services, envelope, reservation)
        WAITING.inc()
        try:
            async with asyncio.timeout_at(deadline):
                result, recorded = await waiter.result(
                    future, envelope.job_id, since=since, history=services.jobs
                )
        except TimeoutError:
            # One more read: a result that missed the reply queue may be in the history.
            result = await recorded_result(services.jobs, envelope.job_id)
            recorded = result is not None
        finally:
            WAITING.dec()
    return Accepted(
        envelope.job_id, envelope, record, event, wait=wait, result=result, recorded=recorded
    )


async def _hold(
    trigger: Trigger,
    services: Services,
    envelope: CommandEnvelope,
    event: dict[str, object] | None,
    reservation: Reservation,
) -> Held:
    """Keep the call for approval and announce it with a ``pending_approval`` notice.

    The hold is written first and the notice confirmed after: a notice that cannot be
    published drops the hold again (the reservation is released), and the caller gets
    the broker's 503 as for any call.
    """
    required = trigger.approvals or 1
    timeout = trigger.approval_timeout or DEFAULT_APPROVAL_TIMEOUT
    approval = await services.holds.hold(envelope, required, timeout)
    notice = JobNotice(
        job_id=envelope.job_id,
        trigger_id=envelope.trigger_id,
        action=envelope.action,
        cluster=envelope.target.cluster,
        app=envelope.target.app,
        service=envelope.target.service,
        status="pending_approval",
        correlation_id=envelope.correlation_id,
        source=envelope.source,
        issued_at=envelope.issued_at,
        approvals=required,
        expires_at=approval.expires_at,
    )
    try:
        await services.bus.publish_notice(notice)
    except BaseException:
        await services.holds.forget(envelope.job_id)
        raise
    await reservation.confirm(envelope.job_id)
    try:
        # At once, so status_url shows the hold; the recorder writes the notice too.
        await services.jobs.record(JobRecord.from_event(notice))
    except Exception as exc:  # the hold stands either way; only this early copy is lost
        log.warning("gateway.pending_unrecorded", job_id=envelope.job_id, error=repr(exc))
    return Held(envelope.job_id, envelope, event, required, approval.expires_at)
