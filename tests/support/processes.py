"""`triggers` services as subprocesses: started on free loopback ports, stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared.triggers import Trigger
from tests.support.cli import triggers_cli
from tests.support.gateways import Gateway, wait_ready

__all__ = [
    "ServiceProcess",
    "free_port",
    "scale_out_and_crash",
    "service_process",
    "start_worker",
]


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServiceProcess:
    """A `triggers gateway|worker|recorder` subprocess: its JSON log lines and its port.

    The port is the gateway's HTTP port, or the metrics port of a worker or recorder.
    """

    port: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    logged: dict[str, asyncio.Event] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The base URL of what listens on the port."""
        return f"http://127.0.0.1:{self.port}"

    async def wait_logged(self, event: str, within: float = 10.0) -> dict[str, Any]:
        """The first log line with this event name, once it is written."""
        await asyncio.wait_for(self.logged.setdefault(event, asyncio.Event()).wait(), within)
        return next(line for line in self.lines if line.get("event") == event)


@contextlib.asynccontextmanager
async def service_process(env: dict[str, str], command: str) -> AsyncIterator[ServiceProcess]:
    """`triggers gateway --port P` (until /readyz is 200) or `triggers worker|recorder
    --metrics-port P` (until it logs `<command>.started`); SIGTERM and exit 0 after.

    A process that exits before it is ready fails the test at once, with its last lines.
    """
    running = ServiceProcess(port=free_port())
    option = "--port" if command == "gateway" else "--metrics-port"
    process = await asyncio.create_subprocess_exec(
        *triggers_cli(), command, option, str(running.port), env=env, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    stderr = process.stderr

    async def read() -> None:
        async for raw in stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": None, "text": raw.decode(errors="replace").rstrip()}
            running.lines.append(line)
            running.logged.setdefault(str(line.get("event")), asyncio.Event()).set()

    async def started() -> None:
        if command == "gateway":
            await wait_ready(running.url)
        else:
            await running.wait_logged(f"{command}.started", within=30)

    reader = asyncio.create_task(read())
    ready = asyncio.create_task(started())
    exited = asyncio.ensure_future(process.wait())
    try:
        await asyncio.wait({ready, exited}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            with contextlib.suppress(TimeoutError):  # the last lines, once written
                await asyncio.wait_for(asyncio.shield(reader), 5)
        if not ready.done() or exited.done():
            msg = f"`triggers {command}` did not get ready: {running.lines[-5:]}"
            raise AssertionError(msg)
        ready.result()
        yield running
    finally:
        ready.cancel()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(exited, 20)
        reader.cancel()
    assert process.returncode == 0, running.lines[-5:]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Subprocesses the test started; killed at the end whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def start_worker(
    env: dict[str, str], processes: list[subprocess.Popen[bytes]], **extra_env: str
) -> subprocess.Popen[bytes]:
    """A `triggers worker` subprocess, registered for clean-up."""
    worker = subprocess.Popen(
        [*triggers_cli(), "worker"],
        env={**env, **extra_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(worker)
    return worker


async def scale_out_and_crash(
    gateway: Gateway,
    trigger: Trigger,
    secret: str,
    env: dict[str, str],
    processes: list[subprocess.Popen[bytes]],
    step: int,
) -> str:
    """Call a scaling trigger with a worker that SIGKILLs itself after applying; the job id."""
    doomed = start_worker(env, processes, TRIGGERS_FAULTS="crash-after-apply")
    url = gateway.call_url(trigger, secret) + f"&type=scale_out&step={step}"
    async with gateway.http.post(url) as response:
        assert response.status == 202
        job_id: str = (await response.json())["job_id"]
    async with asyncio.timeout(30):
        while doomed.poll() is None:
            await asyncio.sleep(0.05)
    assert doomed.returncode == -signal.SIGKILL
    return job_id
