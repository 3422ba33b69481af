"""The worker: consume commands, apply them once, publish the result, then ack.

Outcomes are decided in one place (`Worker._settle`):
- applied (or found already applied): result event, then ack;
- retryable error: a retry through the broker's delay queues, up to `max_attempts`, then
  (unless the orchestrator's ledger shows the last attempt did apply) a failed result and
  dead-letter;
- permanent error: failed result, then dead-letter;
- undecodable message: dead-letter (there is nothing to report on).
A message is never acked before its result event was confirmed by the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime, timedelta
from functools import partial
from typing import Any, ClassVar, Literal

import msgspec
import structlog

from shared.broker import Bus, Delivery, ready_within
from shared.errors import BrokerUnavailable, PermanentError, RetryableError
from shared.messages import (
    Action,
    CommandEnvelope,
    JobNotice,
    ResultEvent,
    RolloutProgress,
    Scale,
    Source,
    Status,
    Target,
    decode_command,
    utcnow,
)
from shared.metrics import APPLY_SECONDS, DEAD_LETTERS, RESULTS, RETRIES, labelled
from shared.settings import Settings
from shared.signals import until_signalled
from workers.applied import AppliedJobs
from workers.faults import crash_now
from workers.handlers import apply_command
from workers.orchestrators.base import Change, Orchestrator, ProgressReport

__all__ = ["GIVE_BACK_PAUSE", "PROGRESS_EVERY", "Worker", "result_event"]

log = structlog.get_logger("triggers.worker")

Settle = Literal["ack", "requeue", "dead_letter"]

# A rollout's progress goes out at most once a second per job, and only when it changed.
PROGRESS_EVERY = 1.0
# A message given back unsettled is requeued after this pause, doubled with each of its
# deliveries, up to the publish timeout (`Worker._give_back`).
GIVE_BACK_PAUSE = 0.1


class Worker:
    """Owns the consume loop of one process."""

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        orchestrator: Orchestrator,
        *,
        applied: AppliedJobs | None = None,
    ) -> None:
        """`applied` is the durable record of applied jobs (workers/applied.py), for
        adapters whose own record lives on the platform's workloads."""
        self._settings = settings
        self._bus = bus
        self._orchestrator = orchestrator
        self._applied = applied
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # At most one progress notice per job this often (seconds).
        self.progress_every = PROGRESS_EVERY

    async def start(self) -> None:
        """Begin consuming, and keep checking that the consumers are there."""
        await self._bus.consume_commands(self._on_delivery, prefetch=self._settings.prefetch)
        self._watchdog = asyncio.create_task(self._watch_consumers())
        log.info(
            "worker.started",
            bus=self._bus.name,
            orchestrator=self._orchestrator.name,
            prefetch=self._settings.prefetch,
        )

    async def stop(self) -> None:
        """Stop taking commands, let the ones in hand finish within the bound, cancel the rest.

        A cancelled command was not acked: the broker redelivers it, and the job ledger
        keeps the redelivery from applying it twice.
        """
        self._stopping.set()
        log.info("worker.stopping", in_hand=len(self._in_flight))
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await self._bus.stop_consuming()
        pending = set(self._in_flight)
        if pending:
            _, still = await asyncio.wait(pending, timeout=self._settings.shutdown_timeout)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still)
        log.info("worker.stopped", finished=len(pending))

    async def run(self) -> None:
        """Consume until SIGTERM or SIGINT, then stop gracefully."""
        await until_signalled(self.start, self.stop)

    async def _watch_consumers(self) -> None:
        while True:
            await asyncio.sleep(self._settings.consumer_check_interval)
            try:
                restored = await self._bus.check_consumers()
            except Exception as exc:
                log.warning("worker.consumer_check_failed", error=repr(exc))
                continue
            if restored:
                log.warning("worker.consumers_restored", queues=restored)

    async def _on_delivery(self, delivery: Delivery) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._handle(delivery)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _handle(self, delivery: Delivery) -> None:
        started = time.monotonic()
        try:
            envelope = decode_command(delivery.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reason = f"undecodable command: {exc}"[:500]
            log.error(  # noqa: TRY400 - the reason is the whole story; no traceback
                "worker.undecodable", reason=reason, attempt=delivery.attempt
            )
            await delivery.dead_letter(reason)
            DEAD_LETTERS.labels("undecodable").inc()
            return
        with structlog.contextvars.bound_contextvars(
            job_id=envelope.job_id,
            correlation_id=envelope.correlation_id,
            trigger_id=envelope.trigger_id,
        ):
            await self._process(envelope, delivery, started)

    async def _process(self, envelope: CommandEnvelope, delivery: Delivery, started: float) -> None:
        attempt = delivery.attempt
        change: Change | None = None
        error: str | None = None
        notice = await self._announce_if_slow(envelope, attempt, started)
        try:
            change = await self._apply(envelope, notice.progress)
        except PermanentError as exc:
            error = str(exc)
        except Exception as exc:
            if not isinstance(exc, RetryableError):
                # An adapter bug or an unexpected client error: retried like a transient
                # failure, bounded, so it can never loop forever on one message.
                log.exception("worker.unexpected_error", attempt=attempt)
            reason = str(exc) if isinstance(exc, RetryableError) else repr(exc)
            if attempt < self._settings.max_attempts and not self._stopping.is_set():
                await self._retry_later(delivery, attempt, reason, envelope.action)
                return
            if self._stopping.is_set():
                await self._give_back(delivery)
                return
            # The last attempt may have changed the platform before its answer was lost.
            change = await self._recorded(envelope)
            if change is None:
                # Final: the reason's own "will retry" no longer holds.
                reason = reason.removesuffix("; will retry")
                error = f"gave up after {attempt} attempts: {reason}"
        finally:
            notice.cancel()
        # A notice being published goes first, so `running` never follows the result.
        await notice.sent()

        if change is not None and "crash-after-apply" in self._settings.faults:
            crash_now()

        event = result_event(
            job_id=envelope.job_id,
            trigger_id=envelope.trigger_id,
            action=envelope.action,
            target=envelope.target,
            change=change,
            error=error,
            attempt=attempt,
            correlation_id=envelope.correlation_id,
            source=envelope.source,
            issued_at=envelope.issued_at,
            started=started,
            orchestrator=self._orchestrator.name,
            requested_step=(envelope.command.step if isinstance(envelope.command, Scale) else None),
            worker=self.name,
        )
        # A change the platform took is answered and acked even when its rollout failed:
        # replaying it would find it applied. Only what was never applied is dead-lettered.
        settle: Settle = "ack" if change is not None else "dead_letter"
        try:
            # Shielded: a shutdown must not cancel between the confirm and the ack.
            await asyncio.shield(
                self._report_and_settle(delivery, event, settle, envelope.reply_to)
            )
        except BrokerUnavailable as exc:
            log.warning("worker.result_unpublished", error=str(exc))
            await self._give_back(delivery)
            return
        labelled(RESULTS, envelope.action, event.status, self._orchestrator.name).inc()
        if settle == "dead_letter":
            DEAD_LETTERS.labels("failed").inc()
        log.info(
            "worker.command",
            action=envelope.action,
            cluster=envelope.target.cluster,
            app=envelope.target.app,
            service=envelope.target.service,
            status=event.status,
            duplicate=event.duplicate,
            clamped=event.clamped,
            attempt=attempt,
            error=event.error,
            duration_ms=event.duration_ms,
        )

    async def _recorded(self, envelope: CommandEnvelope) -> Change | None:
        """The job's recorded change (durable record, then the adapter's ledger); None when
        neither has it or they cannot be read either."""
        try:
            if (
                self._applied is not None
                and (found := await self._applied.get(envelope.job_id)) is not None
            ):
                return msgspec.structs.replace(found, duplicate=True)
            return await self._orchestrator.recorded(envelope.job_id, envelope.target)
        except Exception as exc:  # the job then ends failed, with the original reason
            log.warning("worker.ledger_unreadable", error=repr(exc))
            return None

    async def _apply(self, envelope: CommandEnvelope, progress: ProgressReport) -> Change:
        """Apply through the orchestrator once per job, timed whether it succeeds or raises.

        With the durable record, a job found there is answered from it (a duplicate) and
        never reaches the platform; an applied job is written there before its result goes
        out. A store that cannot be read or written is a retryable failure: applying
        without the check could apply a job twice.
        """
        started = time.perf_counter()
        try:
            if self._applied is None:
                return await apply_command(envelope, self._orchestrator, progress)
            with _store_errors():
                found = await self._applied.get(envelope.job_id)
            if found is not None:
                return msgspec.structs.replace(found, duplicate=True)
            change = await apply_command(envelope, self._orchestrator, progress)
            with _store_errors():
                await asyncio.shield(
                    self._applied.record(
                        envelope.job_id, self._orchestrator.name, envelope.target, change
                    )
                )
            return change
        finally:
            labelled(APPLY_SECONDS, self._orchestrator.name, envelope.action).observe(
                time.perf_counter() - started
            )

    async def _announce_if_slow(
        self, envelope: CommandEnvelope, attempt: int, started: float
    ) -> _RunningNotices:
        """Announce the job as running once it outlasts `running_notice_after`, then its
        rollout's progress as it changes.

        Most commands finish well within it: they go from accepted straight to their
        result, which saves a confirmed publish (and, with a recorder, a quorum-queue
        write) per command. With 0 the notice is published first, before applying.
        """
        notices = _RunningNotices(
            partial(self._announce, envelope, attempt, started), every=self.progress_every
        )
        after = self._settings.running_notice_after
        if after <= 0:
            await notices.announce()
        else:
            notices.announce_after(after)
        return notices

    async def _announce(
        self,
        envelope: CommandEnvelope,
        attempt: int,
        started: float,
        seq: int,
        progress: dict[str, RolloutProgress],
    ) -> None:
        """Tell the recorder the job is running (and how far its rollout got); advisory,
        so a failure only logs.

        `at` is when the worker took the job (`started`, on the monotonic clock), not when
        the notice goes out, so a late notice still dates the start right.
        """
        notice = JobNotice(
            at=utcnow() - timedelta(seconds=time.monotonic() - started),
            job_id=envelope.job_id,
            trigger_id=envelope.trigger_id,
            action=envelope.action,
            cluster=envelope.target.cluster,
            app=envelope.target.app,
            service=envelope.target.service,
            attempt=attempt,
            correlation_id=envelope.correlation_id,
            source=envelope.source,
            issued_at=envelope.issued_at,
            worker=self.name,
            progress=progress,
            progress_at=utcnow() if progress else None,
            seq=seq,
        )
        try:
            await self._bus.publish_notice(notice)
        except BrokerUnavailable as exc:
            log.warning("worker.notice_unpublished", error=str(exc))

    async def _report_and_settle(
        self, delivery: Delivery, event: ResultEvent, settle: Settle, reply_to: str | None
    ) -> None:
        await self._bus.publish_result(event, cc=reply_to)
        if settle == "ack":
            await delivery.ack()
        else:
            await delivery.dead_letter(event.error or "failed")

    async def _retry_later(self, delivery: Delivery, attempt: int, error: str, action: str) -> None:
        delays = self._settings.retry_delays
        delay = delays[min(attempt - 1, len(delays) - 1)]
        log.warning("worker.retry_scheduled", attempt=attempt, wait_for=delay, error=error)
        try:
            await delivery.retry(delay, error)
        except BrokerUnavailable as exc:
            log.warning("worker.retry_unpublished", error=str(exc))
            await self._give_back(delivery)
            return
        RETRIES.labels(action).inc()

    async def _give_back(self, delivery: Delivery) -> None:
        """Return the message unsettled; if the channel is gone, the broker does it for us.

        Requeued at once, the message would come straight back and fail again, each round
        one of the queue's delivery limit (20), and CPU the machine needs. So a bus still
        restoring after a reconnect (its consumers deliver before its publisher is back)
        is waited for first, up to the publish timeout; and then, connected or not, the
        requeue waits `GIVE_BACK_PAUSE`, doubled with each delivery of the message, up to
        the publish timeout. A connected bus sees its publishes refused too: a quorum
        queue nacks them while it elects a leader after its node died, which takes
        seconds. Without the pause, a job whose result was refused went through its
        twenty deliveries in a third of a second and was dead-lettered, applied, with no
        result ever published.
        """
        if not self._stopping.is_set():
            timeout = self._settings.publish_timeout
            await ready_within(lambda: self._bus.ready, timeout)
            await asyncio.sleep(min(GIVE_BACK_PAUSE * 2 ** (delivery.attempt - 1), timeout))
        with contextlib.suppress(Exception):
            await delivery.requeue()


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """The applied-jobs store failing, as the retryable error the worker retries."""
    try:
        yield
    except Exception as exc:
        msg = f"the record of applied jobs (TRIGGERS_DATABASE) failed: {exc!r}; will retry"
        raise RetryableError(msg) from None


class _RunningNotices:
    """A job's `running` notices: the announcement, published only if the job is still
    going after `after` seconds, then its rollout's progress.

    Progress goes out only after the announcement, only when the counts changed since the
    last notice, and at most one notice per `every` seconds; a change held back by that
    goes out with the next report after it (the adapters report on every poll). Notices
    are published one at a time, in order. The timer's callback runs in the context it
    was scheduled from, so the notice task logs with the job's bound context.
    """

    __slots__ = ("_every", "_last", "_lock", "_progress", "_publish", "_seq", "_task", "_timer")

    def __init__(self, publish: _Publish, *, every: float) -> None:
        self._publish = publish
        self._every = every
        self._lock = asyncio.Lock()
        self._seq = 0  # notices published (or being published)
        self._last: tuple[float, dict[str, RolloutProgress]] | None = None
        self._progress: dict[str, RolloutProgress] = {}
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # Strong references to the notices being published: the loop keeps only weak ones.
    _publishing: ClassVar[set[asyncio.Task[None]]] = set()

    def announce_after(self, after: float) -> None:
        """Publish the announcement in `after` seconds unless cancelled before."""
        self._timer = asyncio.get_running_loop().call_later(after, self._fire)

    def _fire(self) -> None:
        self._task = task = asyncio.get_running_loop().create_task(self.announce())
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def announce(self) -> None:
        """Publish the announcement (with the progress known so far)."""
        await self._send()

    async def progress(self, counts: dict[str, RolloutProgress]) -> None:
        """The rollout's latest counts (the adapters' `ProgressReport`)."""
        self._progress = counts
        last = self._last
        if last is None or last[1] == counts or time.monotonic() - last[0] < self._every:
            return
        try:
            await self._send()
        except Exception as exc:  # advisory: never in the way of the rollout
            log.warning("worker.notice_unpublished", error=repr(exc))

    async def _send(self) -> None:
        async with self._lock:
            seq, self._seq = self._seq, self._seq + 1
            counts = self._progress
            self._last = (time.monotonic(), counts)
            await self._publish(seq, counts)

    def cancel(self) -> None:
        """Not due any more (the job is done or handed back); one in flight goes on."""
        if self._timer is not None:
            self._timer.cancel()

    async def sent(self) -> None:
        """Wait for an announcement being published (bounded by the publish timeout)."""
        if self._task is None:
            return
        try:
            await self._task
        except Exception as exc:  # advisory: never in the way of the result
            log.warning("worker.notice_unpublished", error=repr(exc))


_Publish = Callable[[int, dict[str, RolloutProgress]], Coroutine[Any, Any, None]]


def result_event(
    *,
    job_id: str,
    trigger_id: str,
    action: Action,
    target: Target,
    change: Change | None,
    error: str | None,
    attempt: int,
    correlation_id: str,
    source: Source,
    issued_at: datetime | None,
    started: float,
    orchestrator: str,
    requested_step: int | None,
    worker: str,
) -> ResultEvent:
    """The result event of one job: the change applied (or found applied), or the error."""
    status: Status = "failed" if change is None else change.status
    detail = change.detail if change is not None else None
    if change is not None and change.error is not None:
        error = change.error
    if change is not None and change.duplicate:
        note = "already applied by an earlier delivery of this job; nothing changed"
        detail = f"{note}; {detail}" if detail else note
    return ResultEvent(
        job_id=job_id,
        trigger_id=trigger_id,
        action=action,
        cluster=target.cluster,
        app=target.app,
        service=target.service,
        status=status,
        before=change.before if change else {},
        after=change.after if change else {},
        error=error,
        detail=detail,
        duplicate=change.duplicate if change else False,
        clamped=change.clamped if change else False,
        requested_step=requested_step,
        applied_step=change.applied_step if change else None,
        image=change.image if change else None,
        orchestrator=orchestrator,
        attempt=attempt,
        correlation_id=correlation_id,
        source=source,
        issued_at=issued_at,
        duration_ms=round((time.monotonic() - started) * 1000, 2),
        worker=worker,
    )
