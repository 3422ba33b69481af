"""`triggers worker` and `triggers recorder`: the process entry points."""

from __future__ import annotations

from datetime import timedelta

import structlog
from aiohttp import web

from shared.broker import AmqpBus, Bus
from shared.jobs import open_job_store
from shared.messages import utcnow
from shared.metrics import serve_metrics
from shared.settings import Settings
from workers.applied import AppliedJobs, open_applied_jobs
from workers.orchestrators import open_orchestrator
from workers.recorder import Recorder
from workers.worker import Worker

__all__ = ["run_recorder", "run_worker"]

log = structlog.get_logger("triggers.worker")


async def _metrics(service: str, host: str, port: int | None, bus: Bus) -> web.AppRunner | None:
    if port is None:
        return None
    # /readyz follows the broker connection: a probe takes the pod out while it is down.
    runner = await serve_metrics(host, port, service, ready=lambda: bus.ready)
    log.info("metrics.serving", host=host, port=port)
    return runner


async def run_worker(
    settings: Settings,
    *,
    metrics_host: str = Settings.metrics_host,
    metrics_port: int | None = None,
) -> None:
    """Connect, consume until SIGTERM, stop gracefully.

    Unlike the gateway, a worker refuses to start without the broker: it has nothing to
    do until it is there, and a supervisor restarting it says more than a silent wait.
    """
    orchestrator = open_orchestrator(settings)
    # The local cluster records jobs in its own transaction; the others on the workloads,
    # which the platform can rewrite, so they also get the durable record.
    applied: AppliedJobs | None = None
    if settings.orchestrator != "local":
        applied = open_applied_jobs(settings.database)
        await applied.start()
        await applied.prune(utcnow() - timedelta(seconds=settings.job_retention))
    bus = AmqpBus.from_settings(settings, "worker")
    await bus.start()
    metrics = None
    try:
        metrics = await _metrics("worker", metrics_host, metrics_port, bus)
        await Worker(settings, bus, orchestrator, applied=applied).run()
    finally:
        if metrics is not None:
            await metrics.cleanup()
        await bus.close()
        await orchestrator.close()
        if applied is not None:
            await applied.close()


async def run_recorder(
    settings: Settings,
    *,
    metrics_host: str = Settings.metrics_host,
    metrics_port: int | None = None,
) -> None:
    """Record job events into the store until SIGTERM.

    Like a worker, it refuses to start without what it writes to: a database it cannot
    reach or migrate fails here, not on the first event.
    """
    jobs = open_job_store(settings.database)
    try:
        await jobs.start()
        bus = AmqpBus.from_settings(settings, "recorder")
        await bus.start()
        metrics = None
        try:
            metrics = await _metrics("recorder", metrics_host, metrics_port, bus)
            await Recorder(settings, bus, jobs).run()
        finally:
            if metrics is not None:
                await metrics.cleanup()
            await bus.close()
    finally:
        await jobs.close()
