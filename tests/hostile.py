"""A hostile client and two legitimate ones against one gateway, for a bounded time.

From one address (127.0.0.1): `slow` connections that POST headers and then one body byte
every few seconds (reopened as the gateway closes them), and `bad_rate` calls a second
with wrong secrets for the legitimate trigger and made-up trigger ids. Meanwhile a
legitimate caller at the same address and one at another (``::1``) call the trigger with
its secret ten times a second each. `python -m tests.hostile URL QUERY SECONDS` prints the
figures for a gateway already running (the closing note's before/after).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp

__all__ = ["Figures", "attack"]


@dataclass
class Caller:
    """What one legitimate caller saw."""

    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def count(self, status: str) -> None:
        """Count one answer (or failure)."""
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def summary(self) -> dict[str, object]:
        """Statuses and latency figures."""
        ordered = sorted(self.latencies_ms)
        return {
            "statuses": self.statuses,
            "p50_ms": round(statistics.median(ordered), 1) if ordered else None,
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 1) if ordered else None,
            "max_ms": round(ordered[-1], 1) if ordered else None,
        }


@dataclass
class Figures:
    """Everything measured during one attack."""

    seconds: float = 0.0
    bad_sent: int = 0
    bad_statuses: dict[str, int] = field(default_factory=dict)
    slow_opened: int = 0
    slow_open_at_end: int = 0
    slow_answered: dict[str, int] = field(default_factory=dict)
    same_address: Caller = field(default_factory=Caller)
    other_address: Caller = field(default_factory=Caller)

    def summary(self) -> dict[str, object]:
        """A JSON-able summary."""
        return {
            "seconds": round(self.seconds, 1),
            "bad_calls_per_s": round(self.bad_sent / self.seconds) if self.seconds else 0,
            "bad_statuses": self.bad_statuses,
            "slow_connections_opened": self.slow_opened,
            "slow_connections_open_at_end": self.slow_open_at_end,
            "slow_answers": self.slow_answered,
            "legit_same_address": self.same_address.summary(),
            "legit_other_address": self.other_address.summary(),
        }


def _wrong(query: str) -> str:
    """The trigger's query with a wrong secret."""
    values = {k: v[0] for k, v in parse_qs(query).items()}
    values["secret"] = secrets.token_hex(32)
    return urlencode(values)


def _made_up(query: str) -> str:
    """The query of a trigger id that does not exist (same shape, random id)."""
    values = {k: v[0] for k, v in parse_qs(query).items()}
    cluster, app, action, _, _ = base64.b64decode(values["triggerUrl"]).decode().split("|")
    made_up = f"{cluster}|{app}|{action}|{secrets.token_hex(13)}|"
    values["triggerUrl"] = base64.b64encode(made_up.encode()).decode()
    values["secret"] = secrets.token_hex(32)
    return urlencode(values)


async def _slow_connection(
    host: str, port: int, query: str, until: float, figures: Figures
) -> None:
    """One slow body at a time, reopened whenever the gateway closes it, until `until`."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            figures.slow_answered[type(exc).__name__] = (
                figures.slow_answered.get(type(exc).__name__, 0) + 1
            )
            await asyncio.sleep(0.5)
            continue
        figures.slow_opened += 1
        figures.slow_open_at_end += 1
        try:
            writer.write(
                f"POST /hook/trigger?{_wrong(query)} HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode()
            )
            await writer.drain()
            status_seen = False
            while time.monotonic() < until:
                try:
                    line = await asyncio.wait_for(reader.readline(), 3.0)
                except TimeoutError:
                    writer.write(b" ")  # one more body byte, as a slow sender would
                    await writer.drain()
                    continue
                if not line:
                    break  # closed by the gateway
                if not status_seen:
                    status_seen = True
                    code = line.split(b" ")[1].decode() if line.count(b" ") >= 1 else "?"
                    figures.slow_answered[code] = figures.slow_answered.get(code, 0) + 1
        except (OSError, IndexError):
            pass
        finally:
            figures.slow_open_at_end -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _bad_calls(
    http: aiohttp.ClientSession, url: str, query: str, rate: int, until: float, figures: Figures
) -> None:
    """`rate` wrong calls a second, in batches of a tenth of a second."""
    batch = max(rate // 10, 1)

    async def one(i: int) -> None:
        target = _wrong(query) if i % 2 else _made_up(query)
        try:
            async with http.get(f"{url}/hook/trigger?{target}") as response:
                status = str(response.status)
                await response.read()
        except (aiohttp.ClientError, OSError) as exc:
            status = type(exc).__name__
        figures.bad_statuses[status] = figures.bad_statuses.get(status, 0) + 1

    tick = time.monotonic()
    while tick < until:
        figures.bad_sent += batch
        tasks = [asyncio.create_task(one(i)) for i in range(batch)]
        tick += 0.1
        await asyncio.sleep(max(tick - time.monotonic(), 0))
        done, pending = await asyncio.wait(tasks, timeout=0)
        del done, pending  # the batch finishes in the background


async def _legit(
    http: aiohttp.ClientSession, url: str, query: str, until: float, caller: Caller
) -> None:
    """Ten calls a second with the right secret, one at a time."""
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            async with http.get(
                f"{url}/hook/trigger?{query}", timeout=aiohttp.ClientTimeout(total=30)
            ) as response:
                await response.read()
                caller.count(str(response.status))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            caller.count(type(exc).__name__)
        caller.latencies_ms.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.1)


async def attack(
    url: str,
    other_url: str,
    query: str,
    *,
    seconds: float,
    slow: int = 500,
    bad_rate: int = 1000,
) -> Figures:
    """Attack `url` from 127.0.0.1 while legitimate callers use `url` and `other_url` (::1)."""
    figures = Figures()
    split = urlsplit(url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    started = time.monotonic()
    until = started + seconds
    connector = aiohttp.TCPConnector(limit=200)
    async with (
        aiohttp.ClientSession(connector=connector) as bad_http,
        aiohttp.ClientSession() as same_http,
        aiohttp.ClientSession() as other_http,
    ):
        tasks = [
            asyncio.create_task(_slow_connection(host, port, query, until, figures))
            for _ in range(slow)
        ]
        await asyncio.sleep(min(2.0, seconds / 4))  # the slow connections are open first
        tasks += [
            asyncio.create_task(_bad_calls(bad_http, url, query, bad_rate, until, figures)),
            asyncio.create_task(_legit(same_http, url, query, until, figures.same_address)),
            asyncio.create_task(_legit(other_http, other_url, query, until, figures.other_address)),
        ]
        await asyncio.gather(*tasks)
    figures.seconds = time.monotonic() - started
    return figures


if __name__ == "__main__":
    base, call_query, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
    other = base.replace("127.0.0.1", "[::1]")
    result = asyncio.run(attack(base, other, call_query, seconds=duration))
    print(json.dumps(result.summary(), indent=2))
