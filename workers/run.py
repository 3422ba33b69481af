"""`triggers worker`: the process entry point."""

from __future__ import annotations

import structlog

from shared.bus import AmqpBus
from shared.settings import Settings
from workers.orchestrators import open_orchestrator
from workers.worker import Worker

__all__ = ["run_worker"]

log = structlog.get_logger("triggers.worker")


async def run_worker(settings: Settings) -> None:
    """Connect, consume until SIGTERM, stop gracefully.

    Unlike the gateway, a worker refuses to start without the broker: it has nothing to
    do until it is there, and a supervisor restarting it says more than a silent wait.
    """
    orchestrator = open_orchestrator(settings)
    bus = AmqpBus.from_settings(settings, "worker")
    await bus.start()
    try:
        await Worker(settings, bus, orchestrator).run()
    finally:
        await bus.close()
        await orchestrator.close()
