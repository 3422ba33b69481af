"""The recorder: result events and progress notices into the job history store.

It runs as its own process (`triggers recorder`) rather than inside the worker: workers
need the broker and the orchestrator but not the store, scale out freely, and may run
where the store is not reachable; the recorder is the one writer of job history. Its
durable quorum queue keeps events while it is down, so history survives a restart.

A delivery is acked only after its event is in the store; a store error requeues it
(after a backoff, bounded by the queue's delivery limit).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import msgspec
import structlog

from shared.broker import Bus, Delivery
from shared.jobs import JobRecord, JobStore
from shared.messages import decode_job_event, utcnow
from shared.metrics import JOBS_RECORDED
from shared.settings import Settings, prune_interval
from shared.signals import until_signalled

__all__ = ["Recorder"]

log = structlog.get_logger("triggers.recorder")


class Recorder:
    """Consumes `triggers.results.recorder` into a `JobStore`, and prunes old jobs."""

    def __init__(self, settings: Settings, bus: Bus, jobs: JobStore) -> None:
        self._settings = settings
        self._bus = bus
        self._jobs = jobs
        self._pruner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin consuming and pruning."""
        await self._bus.consume_job_events(self._on_delivery, prefetch=self._settings.prefetch)
        self._pruner = asyncio.create_task(self._prune_forever())
        log.info(
            "recorder.started",
            bus=self._bus.name,
            retention_s=self._settings.job_retention,
        )

    async def stop(self) -> None:
        """Stop consuming and pruning; unacked events are redelivered to the next recorder."""
        await self._bus.stop_consuming()
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        log.info("recorder.stopped")

    async def run(self) -> None:
        """Record until SIGTERM or SIGINT."""
        await until_signalled(self.start, self.stop)

    async def prune(self) -> int:
        """Forget jobs older than the retention; return how many."""
        cutoff = utcnow() - timedelta(seconds=self._settings.job_retention)
        removed = await self._jobs.prune(cutoff)
        if removed:
            log.info("recorder.pruned", removed=removed, before=cutoff.isoformat())
        return removed

    async def _prune_forever(self) -> None:
        every = prune_interval(self._settings.job_retention)
        while True:
            try:
                await self.prune()
            except Exception as exc:  # the store may be down for a while; try next round
                log.warning("recorder.prune_failed", error=repr(exc))
            await asyncio.sleep(every)

    async def _on_delivery(self, delivery: Delivery) -> None:
        try:
            event = decode_job_event(delivery.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reason = f"undecodable job event: {exc}"[:500]
            log.error("recorder.undecodable", reason=reason)  # noqa: TRY400 - no traceback needed
            await delivery.dead_letter(reason)
            return
        with structlog.contextvars.bound_contextvars(
            job_id=event.job_id, correlation_id=event.correlation_id
        ):
            try:
                await self._jobs.record(JobRecord.from_event(event))
            except Exception as exc:
                delays = self._settings.retry_delays
                # Capped: the delivery is held while waiting, and the store may be back soon.
                delay = min(delays[min(delivery.attempt - 1, len(delays) - 1)], 30.0)
                log.warning(
                    "recorder.store_failed",
                    error=repr(exc),
                    attempt=delivery.attempt,
                    wait_for=delay,
                )
                await asyncio.sleep(delay)
                await delivery.requeue()
                return
            # Counted once written, before the ack: whoever sees the job in the store
            # (a test, `history`) then finds it counted in /metrics as well.
            JOBS_RECORDED.labels(event.status).inc()
            await delivery.ack()
            log.debug("recorder.recorded", status=event.status, attempt=event.attempt)
