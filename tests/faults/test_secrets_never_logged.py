"""Secrets never appear in a log line, an error body or a result event of a full run."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import aiohttp
import pytest

from shared.broker import AmqpBus
from shared.triggers import new_secret
from tests.faults.harness import WorkerPool
from tests.support.cli import triggers_cli
from tests.support.gateways import wait_ready
from tests.support.processes import free_port
from tests.support.workers import Results


@pytest.mark.slow
async def test_a_full_run_logs_no_secret(
    env: dict[str, str], bus: AmqpBus, results: Results, tmp_path: Path
) -> None:
    """Gateway and worker at debug level, good and bad calls: no secret anywhere in the logs."""
    port = free_port()
    env = {**env, "TRIGGERS_LOG_LEVEL": "debug", "TRIGGERS_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    subprocess.run(
        [*triggers_cli(), "local", "set-app", "--cluster", "demo", "--app", "shop",
         "--service", "web", "--replicas", "1"],
        env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    created = [
        json.loads(
            subprocess.run(
                [*triggers_cli(), "create", "--cluster", "demo", "--app", "shop", *args, "--json"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        )
        for args in (["--action", "scale", "--service", "web"], ["--action", "redeploy"])
    ]
    secrets = [c["secret"] for c in created]
    gateway_log = (tmp_path / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [*triggers_cli(), "gateway", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=gateway_log,
    )  # fmt: skip
    pool = WorkerPool(env=env, log_dir=tmp_path)
    await pool.start()
    bodies: list[str] = []
    try:
        scale_url, redeploy_url = created[0]["url"], created[1]["url"]
        calls = [
            ("POST", f"{scale_url}&type=scale_out&step=2"),
            ("GET", f"{scale_url}&type=scale_in&step=1"),
            ("GET", redeploy_url),
            ("GET", f"{scale_url}&type=scale_out&step=0"),  # bad step, right secret
            ("GET", f"{redeploy_url}&type=scale_out&step=1"),  # scale params on redeploy
            ("GET", scale_url.replace(secrets[0], secrets[1])),  # the other trigger's secret
            ("GET", scale_url.replace(secrets[0], new_secret())),
            ("PUT", redeploy_url),
            ("POST", f"{scale_url}&type=scale_out&step=1&secret={secrets[0]}"),
        ]
        accepted = []
        await wait_ready(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as http:
            for method, url in calls:
                async with http.request(method, url, headers={"User-Agent": "ci/1.0"}) as response:
                    bodies.append(await response.text())
                    if response.status == 202:
                        accepted.append((await response.json())["job_id"])
        assert len(accepted) == 3
        await asyncio.gather(*(results.wait_for(job) for job in accepted))
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        gateway_log.close()
        await pool.stop_all()

    logs = "".join([p.read_text() for p in sorted(tmp_path.glob("*.log"))])  # noqa: ASYNC240 - small files, after the run
    lines = [json.loads(line) for line in logs.splitlines()]
    hook_lines = [
        x for x in lines if x["event"] == "gateway.request" and x["path"] == "/hook/trigger"
    ]
    assert len(hook_lines) == len(calls)
    assert sum(x["event"] == "worker.command" for x in lines) == 3
    events = "".join(json.dumps(e.__struct_fields__) + repr(e) for e in results.events)
    for secret in secrets:
        assert secret not in logs
        assert secret not in events
        assert not any(secret in body for body in bodies)
