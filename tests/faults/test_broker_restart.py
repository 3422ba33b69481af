"""RabbitMQ stopped and started under load: 202 means applied exactly once, workers resume.

The node stopped (`rabbitmqctl stop_app`) and started again is the test's own (see
tests/rabbitmq_nodes.py), never the shared one on 5672; it is stopped by PID at the end.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from shared.settings import Settings
from shared.store import SqliteTriggerStore
from shared.topology import COMMAND_QUEUES
from shared.triggers import trigger_call_url
from tests.faults.harness import Accepted, WorkerPool, applied_jobs, fire
from tests.rabbitmq_nodes import RabbitNode, rabbit_node
from workers.orchestrators.local import LocalOrchestrator


async def _consumers(amqp_url: str) -> dict[str, int]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        counts = {}
        for name in COMMAND_QUEUES.values():
            queue = await channel.declare_queue(name, passive=True)
            counts[name] = queue.declaration_result.consumer_count or 0
        return counts


async def _load_until(
    restarted: asyncio.Event, http: aiohttp.ClientSession, url: str, steps: list[int]
) -> list[Accepted]:
    """Calls in rounds of 20 until the node is back (and at least `steps` of them): a slow
    `rabbitmqctl` must not find the load already over."""
    done: list[Accepted] = []
    while not restarted.is_set() or len(done) < len(steps):
        part = steps[len(done) % len(steps) :][:20] or steps[:20]
        done += await fire(http, url, part, concurrency=4, pause=0.02)
    return done


@pytest.fixture
def own_broker() -> Iterator[RabbitNode]:
    """A RabbitMQ node of the test's own, stopped by PID afterwards whatever happened."""
    with rabbit_node() as node:
        yield node


@pytest.mark.slow
@pytest.mark.timeout(600)  # the node of its own boots first, slowly on a busy machine
async def test_broker_restart_under_load(
    settings: Settings,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    env: dict[str, str],
    tmp_path: Path,
    own_broker: RabbitNode,
) -> None:
    """Every 202 is applied exactly once; every other answer is a 5xx; workers consume again."""
    settings = settings.with_(amqp_url=own_broker.url)
    trigger, secret = await store.create(cluster="demo", app="shop", action="scale", service="web")
    server = TestServer(
        create_app(settings.with_(publish_timeout=2.0), store=store), host="127.0.0.1"
    )
    await server.start_server()
    url = trigger_call_url(str(server.make_url("")).rstrip("/"), trigger, secret)
    pool = WorkerPool(
        env={**env, "TRIGGERS_AMQP_URL": own_broker.url, "TRIGGERS_CONSUMER_CHECK_INTERVAL": "1"},
        log_dir=tmp_path,
    )
    await pool.start()
    rng = random.Random(5)
    steps = [rng.randint(1, 3) for _ in range(400)]
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):  # the gateway connects in the background
                while (await fire(http, url, [1], concurrency=1))[0].status != 202:
                    await asyncio.sleep(0.2)
            restarted = asyncio.Event()
            loading = asyncio.create_task(_load_until(restarted, http, url, steps))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(own_broker.ctl, "stop_app")
            await asyncio.sleep(2.0)
            await asyncio.to_thread(own_broker.ctl, "start_app")
            restarted.set()
            calls = await asyncio.wait_for(loading, 120)
    finally:
        await server.close()

    try:
        accepted = {c.job_id: c.step for c in calls if c.status == 202 and c.job_id}
        others = [c.status for c in calls if c.status != 202]
        assert all(500 <= s < 600 for s in others), sorted(set(others))
        assert others, "the broker outage was not felt: no call was refused"
        assert accepted, "no call was accepted"
        async with asyncio.timeout(90):
            while not set(accepted) <= set(applied_jobs(settings.local_state)):
                await asyncio.sleep(0.2)
        ledger = applied_jobs(settings.local_state)
        for job, step in accepted.items():
            assert ledger[job] == step
        web = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]["web"]
        # The first probe call is in the ledger too; a refused call whose publish did reach
        # the broker may be applied as well (the caller was told 503 and may retry).
        assert web["replicas"] == 2 + sum(ledger.values())
        # The workers reconnect on their own schedule (every 2 s); the jobs above may all be
        # applied before that, so wait for the consumers (bounded) rather than race them.
        expected = {q: 1 for q in COMMAND_QUEUES.values()}
        async with asyncio.timeout(30):
            while (consumers := await _consumers(settings.amqp_url)) != expected:
                await asyncio.sleep(0.2)
        assert consumers == expected
        refused_but_applied = len(set(ledger) - set(accepted)) - 1
        print(
            f"\nbroker restart: {len(calls)} calls, {len(accepted)} accepted and applied once, "
            f"{len(others)} refused with 5xx ({refused_but_applied} of them applied anyway), "
            "0 lost, 0 applied twice"
        )
    finally:
        await pool.stop_all()
