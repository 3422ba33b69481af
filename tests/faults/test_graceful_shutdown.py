"""SIGTERM: the worker stops taking commands, finishes the one in hand, leaves the rest."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import pytest

from shared.bus import AmqpBus
from shared.messages import CommandEnvelope, Scale, Target, new_job_id
from shared.settings import Settings
from shared.topology import COMMAND_QUEUES
from tests.conftest import Results, queue_depth
from tests.faults.harness import WorkerPool
from workers.orchestrators.local import LocalOrchestrator


def _scale(step: int) -> CommandEnvelope:
    return CommandEnvelope(
        job_id=new_job_id(),
        trigger_id="t" * 26,
        target=Target(cluster="demo", app="shop", service="web"),
        command=Scale(direction="scale_out", step=step),
    )


@pytest.mark.slow
async def test_sigterm_finishes_the_command_in_hand_and_leaves_the_rest_queued(
    settings: Settings,
    bus: AmqpBus,
    cluster: LocalOrchestrator,
    results: Results,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A worker told to stop mid-change completes it, reports it, exits 0; the next waits."""
    pool = WorkerPool(env={**env, "TRIGGERS_PREFETCH": "1"}, log_dir=tmp_path)
    process = await pool.start()
    # Hold the cluster's write lock so the worker's change blocks mid-flight.
    lock = sqlite3.connect(settings.local_state, timeout=1, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        first, second = _scale(1), _scale(2)
        await bus.publish_command(first)
        await bus.publish_command(second)
        queue = COMMAND_QUEUES["scale"]
        async with asyncio.timeout(30):
            while await queue_depth(settings.amqp_url, queue) != 1:  # one taken, one waiting
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert process.returncode is None  # still finishing the command in hand
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert await asyncio.wait_for(process.wait(), 30) == 0
    (event,) = await results.wait_for(first.job_id)
    assert event.status == "succeeded"
    assert event.after["web"].replicas == 3
    assert results.for_job(second.job_id) == []
    assert await queue_depth(settings.amqp_url, COMMAND_QUEUES["scale"]) == 1
    log = (tmp_path / "worker-1.log").read_text()
    assert '"worker.stopped"' in log
