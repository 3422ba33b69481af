"""Exactly-once effect over at-least-once delivery."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import pytest

from shared.broker import AmqpBus
from shared.messages import CommandEnvelope, Redeploy, Target, new_job_id
from shared.store import SqliteTriggerStore
from tests.support.gateways import Gateway
from tests.support.messages import scale_command
from tests.support.processes import scale_out_and_crash, start_worker
from tests.support.workers import Results
from workers.orchestrators.local import LocalOrchestrator
from workers.worker import Worker


def _services(cluster: LocalOrchestrator) -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = cluster.cluster.snapshot()["clusters"]["demo"]["apps"][
        "shop"
    ]["services"]
    return services


async def test_same_command_published_twice_changes_the_cluster_once(
    bus: AmqpBus, cluster: LocalOrchestrator, worker: Worker, results: Results
) -> None:
    """A duplicate publish yields a second result marked duplicate, and no second change."""
    envelope = scale_command(3)
    await bus.publish_command(envelope)
    await bus.publish_command(envelope)
    first, second = sorted(
        await results.wait_for(envelope.job_id, count=2), key=lambda e: e.duplicate
    )
    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.after["web"].replicas == second.after["web"].replicas == 5
    assert second.detail is not None
    assert "already applied" in second.detail
    assert _services(cluster)["web"]["replicas"] == 5


async def test_distinct_jobs_each_apply(
    bus: AmqpBus, cluster: LocalOrchestrator, worker: Worker, results: Results
) -> None:
    """Idempotency is per job: twenty different redeploys raise the revision twenty times."""
    jobs = []
    for _ in range(20):
        envelope = CommandEnvelope(
            job_id=new_job_id(),
            trigger_id="t" * 26,
            target=Target(cluster="demo", app="shop"),
            command=Redeploy(),
        )
        jobs.append(envelope.job_id)
        await bus.publish_command(envelope)
    await asyncio.gather(*(results.wait_for(j) for j in jobs))
    assert _services(cluster)["web"]["revision"] == 21
    assert _services(cluster)["api"]["revision"] == 21


@pytest.mark.slow
async def test_worker_killed_between_apply_and_ack_leaves_exactly_one_change(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    results: Results,
    env: dict[str, str],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """SIGKILL after the change and before the ack: the redelivery reports, and changes nothing."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="scale", service="web")
    job_id = await scale_out_and_crash(gateway, trigger, secret, env, processes, step=4)
    assert _services(cluster)["web"]["replicas"] == 6  # applied once...
    assert results.for_job(job_id) == []  # ...but never reported or acked

    survivor = start_worker(env, processes)
    (event,) = await results.wait_for(job_id, within=30)
    assert event.status == "succeeded"
    assert event.duplicate is True
    assert event.before["web"].replicas == 2
    assert event.after["web"].replicas == 6
    assert event.attempt == 2
    assert _services(cluster)["web"]["replicas"] == 6
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=30) == 0
