"""SIGTERM: the worker stops taking commands, finishes the one in hand, leaves the rest."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from shared.broker import AmqpBus
from shared.settings import Settings
from shared.topology import COMMAND_QUEUES
from tests.faults.harness import WorkerPool
from tests.proxy import TcpProxy
from tests.support.broker import queue_depth
from tests.support.cli import triggers_cli
from tests.support.gateways import wait_ready
from tests.support.messages import scale_command
from tests.support.processes import free_port
from tests.support.workers import Results
from workers.orchestrators.local import LocalOrchestrator


def _events(log_file: Path, event: str) -> list[dict[str, object]]:
    """The JSON log lines of one event, in order."""
    lines = [line for line in log_file.read_text().splitlines() if line.startswith("{")]
    return [entry for line in lines if (entry := json.loads(line)).get("event") == event]


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
        first, second = scale_command(1), scale_command(2)
        await bus.publish_command(first)
        await bus.publish_command(second)
        queue = COMMAND_QUEUES["scale"]
        async with asyncio.timeout(30):
            while await queue_depth(settings.amqp_url, queue) != 1:  # one taken, one waiting
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):  # the worker says it is stopping, with one in hand
            while not (stopping := _events(tmp_path / "worker-1.log", "worker.stopping")):
                await asyncio.sleep(0.05)
        assert stopping[0]["in_hand"] == 1
        # The lock holds that change mid-flight, so the worker cannot have finished it yet.
        assert process.returncode is None
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


@pytest.mark.slow
async def test_gateway_sigterm_finishes_the_request_in_flight(
    settings: Settings, env: dict[str, str], bus: AmqpBus
) -> None:
    """SIGTERM while a call waits for a slow broker's confirm: it still gets its 202, then exit 0."""
    parts = urlsplit(settings.amqp_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    port = free_port()
    env = {
        **env,
        "TRIGGERS_AMQP_URL": parts._replace(
            netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
        ).geturl(),
        "TRIGGERS_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    created = json.loads(
        subprocess.run(
            [*triggers_cli(), "create", "--cluster", "demo", "--app", "shop",
             "--action", "redeploy", "--json"],
            env=env, check=True, capture_output=True, text=True, timeout=60,
        ).stdout
    )  # fmt: skip
    gateway = await asyncio.create_subprocess_exec(
        *triggers_cli(), "gateway", "--port", str(port), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as http:
            proxy.delay = 1.5  # every confirm now takes 1.5 s to come back

            async def call() -> int:
                async with http.get(created["url"]) as response:
                    return response.status

            held = proxy.held
            in_flight = asyncio.create_task(call())
            async with asyncio.timeout(30):  # the publish reached the broker; its confirm waits
                while proxy.held == held:
                    await asyncio.sleep(0.01)
            gateway.send_signal(signal.SIGTERM)
            assert not in_flight.done()
            # Answered 202 only if the gateway finished the request after the signal.
            assert await asyncio.wait_for(in_flight, 20) == 202
        assert await asyncio.wait_for(gateway.wait(), 30) == 0
    finally:
        if gateway.returncode is None:
            gateway.kill()
            await gateway.wait()
        await proxy.close()
