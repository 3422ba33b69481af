"""Measure a burst of scale calls on one service of a real Swarm (issue 14's figures).

    python -m tests.real.swarm_burst [--calls 100] [--concurrency 64]

One worker's adapter takes `calls` scale_out jobs of one replica each for one service,
`concurrency` at a time (a worker's prefetch), as a burst of trigger calls gives them.
Printed: how many ended applied, the engine's "update out of sequence" answers (from its
log), the update requests sent, and the time until the last result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiodocker

from shared.errors import TriggersError
from shared.messages import Target
from tests.support.dockerd import Dockerd, running_swarm
from workers.orchestrators.swarm import SwarmOrchestrator

__all__ = ["burst", "main"]


async def burst(daemon: Dockerd, calls: int, concurrency: int) -> dict[str, Any]:
    """Run the burst against `daemon`'s stack ``burst`` (service ``web``); the figures."""
    daemon.docker(
        "service", "create", "--name", "burst_web", "--label", "com.docker.stack.namespace=burst",
        "--replicas", "0", "--stop-grace-period", "1s", "tiny:1",
    )  # fmt: skip
    conflicts_before = daemon.log_count("update out of sequence")
    posts = 0
    original = aiodocker.Docker._query_json

    async def counted(self: aiodocker.Docker, path: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal posts
        if path.endswith("/update"):
            posts += 1
        return await original(self, path, *args, **kwargs)

    setattr(aiodocker.Docker, "_query_json", counted)  # noqa: B010 - counts update requests
    adapter = SwarmOrchestrator(docker_host=daemon.url, timeout=30)
    gate = asyncio.Semaphore(concurrency)
    target = Target(cluster="real", app="burst", service="web")
    failed: list[str] = []

    attempts = 0

    async def one(i: int) -> None:
        # As the worker does: a retryable failure goes back to the broker for the next
        # delay (TRIGGERS_RETRY_DELAYS' default), up to 5 attempts.
        nonlocal attempts
        for attempt, delay in enumerate((1.0, 5.0, 30.0, 120.0, None), start=1):
            async with gate:
                attempts += 1
                try:
                    await adapter.scale(f"burst-{i}", target, delta=1)
                except TriggersError as exc:
                    if delay is None:
                        failed.append(f"attempt {attempt}: {exc}")
                else:
                    return
            if delay is not None:
                await asyncio.sleep(delay)

    started = time.monotonic()
    try:
        await asyncio.gather(*(one(i) for i in range(calls)))
        elapsed = time.monotonic() - started
        replicas = (await adapter.state(target))["web"].replicas
    finally:
        setattr(aiodocker.Docker, "_query_json", original)  # noqa: B010 - restore
        await adapter.close()
    return {
        "calls": calls,
        "concurrency": concurrency,
        "applied": calls - len(failed),
        "failed": len(failed),
        "replicas": replicas,
        "worker_attempts": attempts,
        "update_requests": posts,
        "engine_out_of_sequence": daemon.log_count("update out of sequence") - conflicts_before,
        "seconds_to_last_result": round(elapsed, 2),
    }


def main() -> None:
    """Start a private Swarm, run the burst, print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with running_swarm() as daemon:
        daemon.build_image("tiny:1")
        print(json.dumps(asyncio.run(burst(daemon, args.calls, args.concurrency)), indent=2))


if __name__ == "__main__":
    main()
