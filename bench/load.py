"""Load generators: wrk when installed, else an aiohttp client doing the same (closed loop)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field

import aiohttp
import psutil

__all__ = ["LoadResult", "http_load", "percentile", "python_load", "wrk_load"]


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    generator: str
    generator_cpu: float
    # Answers other than 2xx by status (0: no answer); wrk only tells how many.
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return (self.requests - self.errors) / self.seconds if self.seconds else 0.0


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an unsorted list (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def wrk_load(url: str, *, connections: int, seconds: float) -> LoadResult:
    """One wrk run (one thread: the machine has few cores and wrk needs little)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        msg = "wrk is not installed (apt-get install wrk)"
        raise FileNotFoundError(msg)
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # noqa: S603 - fixed argv
    watched = psutil.Process(process.pid)
    cpu = 0.0
    # Sample CPU just before it exits: after wait() its /proc entry is gone.
    while process.poll() is None:
        try:
            times = watched.cpu_times()
            cpu = times.user + times.system
        except psutil.Error:
            break
        time.sleep(0.1)
    out = process.communicate(timeout=30)[0]
    latencies = {m[0]: float(m[1]) * _UNITS[m[2]] for m in _LATENCY.findall(out)}
    total = _TOTAL.search(out)
    if total is None or "50" not in latencies:
        msg = f"cannot read wrk's output: {out[-500:]}"
        raise RuntimeError(msg)
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[total[3]]
    errors = sum(int(n) for n in _NON_2XX.findall(out))
    if (sockets := _SOCKET.search(out)) is not None:
        errors += sum(int(n) for n in sockets.groups())
    return LoadResult(
        requests=int(total[1]),
        seconds=float(total[2]) * scale,
        p50_ms=latencies["50"],
        p99_ms=latencies.get("99", latencies["50"]),
        errors=errors,
        generator="wrk",
        generator_cpu=cpu,
    )


async def python_load(url: str, *, connections: int, seconds: float) -> LoadResult:
    """`connections` keep-alive connections, each sending the next request on an answer."""
    latencies: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    started_cpu = time.process_time()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    async with http.get(url) as response:
                        await response.read()
                        status = response.status
                except aiohttp.ClientError:
                    status = 0
                latencies.append((time.perf_counter() - began) * 1000)
                if not 200 <= status < 300:
                    errors += 1
                    statuses[status] = statuses.get(status, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    return LoadResult(
        requests=len(latencies),
        seconds=elapsed,
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        errors=errors,
        generator="python",
        generator_cpu=time.process_time() - started_cpu,
        statuses=statuses,
    )


async def http_load(url: str, *, connections: int, seconds: float, use_wrk: bool) -> LoadResult:
    """wrk when asked for and installed, else the Python generator."""
    if use_wrk and shutil.which("wrk"):
        return await asyncio.to_thread(wrk_load, url, connections=connections, seconds=seconds)
    return await python_load(url, connections=connections, seconds=seconds)
