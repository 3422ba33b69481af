"""Processes and load for the fault tests: real `triggers worker` subprocesses, real HTTP."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.support.cli import triggers_cli

__all__ = ["Accepted", "WorkerPool", "applied_jobs", "fire"]


@dataclass
class WorkerPool:
    """`triggers worker` subprocesses that a test can kill and replace."""

    env: dict[str, str]
    log_dir: Path
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    started: int = 0
    killed: int = 0

    async def start(self, extra_env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
        """Start one more worker; its JSON logs go to a file of their own."""
        self.started += 1
        log = (self.log_dir / f"worker-{self.started}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            *triggers_cli(),
            "worker",
            env={**self.env, **(extra_env or {})},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        self.processes.append(process)
        return process

    async def kill_one(self, rng: random.Random) -> None:
        """SIGKILL a running worker at random."""
        alive = [p for p in self.processes if p.returncode is None]
        victim = rng.choice(alive)
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        self.killed += 1

    async def stop_all(self) -> None:
        """SIGTERM what is left and wait for it."""
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


@dataclass(frozen=True)
class Accepted:
    """A call the gateway answered."""

    status: int
    step: int
    job_id: str | None


async def fire(
    http: aiohttp.ClientSession,
    url: str,
    steps: list[int],
    concurrency: int,
    pause: float = 0.0,
) -> list[Accepted]:
    """Call a scaling trigger once per step, `concurrency` calls in flight."""
    slots = asyncio.Semaphore(concurrency)

    async def one(step: int) -> Accepted:
        async with slots:
            try:
                async with http.post(f"{url}&type=scale_out&step={step}") as response:
                    body = await response.json()
                    status = response.status
            except aiohttp.ClientError:
                return Accepted(status=0, step=step, job_id=None)
            if pause:
                await asyncio.sleep(pause)
            return Accepted(status=status, step=step, job_id=body.get("job_id"))

    return await asyncio.gather(*(one(s) for s in steps))


def applied_jobs(local_state: str) -> dict[str, int]:
    """Job id -> replicas it added, from the local cluster's job ledger."""
    conn = sqlite3.connect(local_state, timeout=30)
    try:
        rows = conn.execute(
            "SELECT job_id, json_extract(change, '$.applied_step') FROM applied_jobs"
        )
        return {job: int(step or 0) for job, step in rows}
    finally:
        conn.close()
