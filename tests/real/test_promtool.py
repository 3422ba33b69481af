"""``promtool check metrics`` on what the gateway, the worker and the recorder serve at
/metrics, after a call has gone through all three (so every family has samples)."""

from __future__ import annotations

import shutil
import subprocess

import aiohttp
import pytest

from tests.support.cli import created_scale_trigger
from tests.support.processes import service_process
from workers.orchestrators.local import LocalOrchestrator

pytestmark = pytest.mark.skipif(
    not shutil.which("promtool"), reason="needs promtool (.ci/run installs prometheus)"
)


def _promtool(exposition: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_every_service_metrics_pass_promtool(
    env: dict[str, str], cluster: LocalOrchestrator
) -> None:
    """The three /metrics expositions are valid and lint-clean for Prometheus."""
    query = await created_scale_trigger(env)
    async with (
        service_process(env, "recorder") as recorder,
        service_process(env, "worker") as worker,
        service_process(env, "gateway") as gateway,
        aiohttp.ClientSession() as http,
    ):
        call = f"{gateway.url}/hook/trigger?{query}&type=scale_out&step=1&wait=5"
        async with http.post(call) as response:
            assert response.status == 200, await response.text()
        for name, service in (("gateway", gateway), ("worker", worker), ("recorder", recorder)):
            async with http.get(f"{service.url}/metrics") as response:
                assert response.status == 200
                exposition = await response.text()
            checked = _promtool(exposition)
            assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"
            assert checked.stdout.strip() == "", f"{name}: {checked.stdout}"
