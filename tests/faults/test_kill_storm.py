"""500 scale_out calls while workers are SIGKILLed and restarted: every step applied once."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from shared.store import SqliteTriggerStore
from tests.faults.harness import WorkerPool, applied_jobs, fire
from tests.support.gateways import Gateway
from tests.support.workers import Results
from workers.orchestrators.local import LocalOrchestrator

CALLS = 500


@pytest.mark.slow
async def test_sigkill_storm_applies_every_accepted_step_exactly_once(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    results: Results,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Final replicas = start + the sum of accepted steps; one change and a result per job."""
    rng = random.Random(20261127)
    trigger, secret = await store.create(cluster="demo", app="shop", action="scale", service="web")
    pool = WorkerPool(env={**env, "TRIGGERS_PREFETCH": "8"}, log_dir=tmp_path)
    await pool.start()
    await pool.start()
    steps = [rng.randint(1, 3) for _ in range(CALLS)]
    try:
        load = asyncio.create_task(
            # Paced (at least 500 / 8 x 0.1 s = 6 s whatever the gateway's speed), so the
            # storm kills workers several times while calls still arrive.
            fire(gateway.http, gateway.call_url(trigger, secret), steps, concurrency=8, pause=0.1)
        )
        kills_during_load = 0
        while not load.done():
            await asyncio.sleep(rng.uniform(0.3, 0.8))
            await pool.kill_one(rng)
            kills_during_load += not load.done()
            await pool.start()
        calls = await load
        accepted = {c.job_id: c.step for c in calls if c.status == 202 and c.job_id}
        assert len(accepted) == CALLS, {c.status for c in calls}
        await asyncio.gather(*(results.wait_for(job, within=120) for job in accepted))
    finally:
        await pool.stop_all()

    ledger = applied_jobs(gateway.settings.local_state)
    web = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]["web"]
    assert web["replicas"] == 2 + sum(accepted.values())
    assert ledger == accepted  # each accepted job changed the cluster once, by its own step
    for job, step in accepted.items():
        events = results.for_job(job)
        # Every event of a job, duplicate deliveries included, reports the one change it made.
        before = events[0].before["web"].replicas
        assert {(e.before["web"].replicas, e.after["web"].replicas) for e in events} == {
            (before, before + step)
        }
    duplicates = sum(e.duplicate for e in results.events)
    print(  # the figures for the closing note (pytest -s shows them)
        f"\nkill storm: {CALLS} calls, {len(accepted)} accepted, {pool.killed} kills "
        f"({kills_during_load} during load), {pool.started} worker starts, "
        f"{len(results.events)} result events, {duplicates} duplicate deliveries, "
        f"0 lost, 0 applied twice"
    )
    assert kills_during_load >= 3
