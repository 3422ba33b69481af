"""A hostile client against one gateway, for a bounded time, and the legitimate callers
measured beside it.

`attack` (run it in a process of its own, `python -m tests.hostile URL QUERY SECONDS`, so
that the callers measured are not slowed by the attacker's own work) sends, from
127.0.0.1: `slow` connections that POST headers and then a body byte every few seconds,
reopened half a second after the gateway closes them; and `bad_rate` calls a second with
wrong secrets for the trigger and made-up trigger ids, from two processes (`flood`) of
ten keep-alive connections each, pipelined and sent on schedule whatever the answers.
`legit` calls the trigger with its secret ten times a second.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import resource
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp

__all__ = ["Attack", "Caller", "attack", "legit"]


def _count(table: dict[str, int], key: str) -> None:
    table[key] = table.get(key, 0) + 1


@dataclass
class Caller:
    """What one legitimate caller saw."""

    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """Statuses and latency figures."""
        ordered = sorted(self.latencies_ms)
        return {
            "statuses": self.statuses,
            "p50_ms": round(statistics.median(ordered), 1) if ordered else None,
            "p99_ms": round(ordered[max(int(len(ordered) * 0.99) - 1, 0)], 1) if ordered else None,
            "max_ms": round(ordered[-1], 1) if ordered else None,
        }


@dataclass
class Attack:
    """What the attacker saw."""

    seconds: float = 0.0
    bad_answers: dict[str, int] = field(default_factory=dict)
    slow_opened: int = 0
    slow_open: int = 0
    slow_open_max: int = 0
    slow_answers: dict[str, int] = field(default_factory=dict)
    slow_held_s: list[float] = field(default_factory=list)
    # CPU seconds the generator spent: the flood processes, and this one (slow connections).
    flood_cpu_s: float = 0.0
    slow_cpu_s: float = 0.0

    def summary(self) -> dict[str, object]:
        """A JSON-able summary."""
        bad = sum(self.bad_answers.values())
        held = sorted(self.slow_held_s)
        return {
            "seconds": round(self.seconds, 1),
            "bad_answered_per_s": round(bad / self.seconds) if self.seconds else 0,
            "bad_answers": self.bad_answers,
            "slow_connections_opened": self.slow_opened,
            "slow_connections_open_at_most": self.slow_open_max,
            "slow_answers": self.slow_answers,
            "slow_connection_held_s_p50": round(statistics.median(held), 1) if held else None,
            "slow_connection_held_s_max": round(held[-1], 1) if held else None,
            "flood_cpu_s": round(self.flood_cpu_s, 1),
            "slow_cpu_s": round(self.slow_cpu_s, 1),
        }


def _wrong(query: str) -> str:
    values = {k: v[0] for k, v in parse_qs(query).items()}
    values["secret"] = secrets.token_hex(32)
    return urlencode(values)


def _made_up(query: str) -> str:
    values = {k: v[0] for k, v in parse_qs(query).items()}
    cluster, app, action, _, _ = base64.b64decode(values["triggerUrl"]).decode().split("|")
    values["triggerUrl"] = base64.b64encode(
        f"{cluster}|{app}|{action}|{secrets.token_hex(13)}|".encode()
    ).decode()
    values["secret"] = secrets.token_hex(32)
    return urlencode(values)


async def _slow(host: str, port: int, query: str, until: float, seen: Attack) -> None:
    """One slow body at a time, reopened half a second after the gateway closes it."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            _count(seen.slow_answers, type(exc).__name__)
            await asyncio.sleep(0.5)
            continue
        opened = time.monotonic()
        seen.slow_opened += 1
        seen.slow_open += 1
        seen.slow_open_max = max(seen.slow_open_max, seen.slow_open)
        try:
            writer.write(
                f"POST /hook/trigger?{_wrong(query)} HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
            )
            await writer.drain()
            answered = False
            while time.monotonic() < until:
                try:
                    line = await asyncio.wait_for(
                        reader.readline(), min(5.0, max(until - time.monotonic(), 0.1))
                    )
                except TimeoutError:
                    writer.write(b" ")  # one more body byte, as a slow sender would
                    await writer.drain()
                    continue
                if not line:
                    break  # closed by the gateway
                if not answered:
                    answered = True
                    parts = line.split(b" ")
                    _count(seen.slow_answers, parts[1].decode() if len(parts) > 1 else "?")
        except OSError as exc:
            _count(seen.slow_answers, type(exc).__name__)
        finally:
            seen.slow_open -= 1
            seen.slow_held_s.append(time.monotonic() - opened)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await asyncio.sleep(0.5)


class _Answers:
    """HTTP/1.1 answers parsed off one connection's bytes: status lines and bodies skipped
    by Content-Length, with bytes operations only, so that counting costs little CPU."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[str]:
        """The statuses of the answers complete in what has arrived so far."""
        self._buffer += data
        statuses: list[str] = []
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return statuses
            head = self._buffer[:end]
            found = _CONTENT_LENGTH.search(head)
            length = int(found.group(1)) if found else 0
            if len(self._buffer) < end + 4 + length:
                return statuses
            statuses.append(head[9:12].decode())
            self._buffer = self._buffer[end + 4 + length :]


_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


@dataclass
class _Pipe:
    """One flood connection: calls sent and not answered yet, and whether sending stopped."""

    in_flight: int = 0
    sent_all: bool = False


# Unanswered calls one connection may have outstanding before it stops sending.
_IN_FLIGHT = 200


async def _bad(host: str, port: int, query: str, per_tick: int, until: float, seen: Attack) -> None:
    """`per_tick` wrong calls every tenth of a second, pipelined on one keep-alive connection,
    sent on schedule whether or not the earlier ones were answered (at most `_IN_FLIGHT`
    unanswered), so that the gateway's answers, not the round trip, set the rate."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            _count(seen.bad_answers, type(exc).__name__)
            await asyncio.sleep(0.1)
            continue
        pipe = _Pipe()
        reading = asyncio.create_task(_count_answers(reader, seen, pipe))
        tick = time.monotonic()
        try:
            while time.monotonic() < until and not reading.done():
                if pipe.in_flight < _IN_FLIGHT:
                    targets = [_wrong(query) if i % 2 else _made_up(query) for i in range(per_tick)]
                    writer.write(
                        b"".join(
                            f"GET /hook/trigger?{t} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                            for t in targets
                        )
                    )
                    pipe.in_flight += len(targets)
                    await writer.drain()
                tick = max(tick + 0.1, time.monotonic() - 0.1)
                await asyncio.sleep(max(tick - time.monotonic(), 0))
        except OSError as exc:
            _count(seen.bad_answers, type(exc).__name__)
        finally:
            pipe.sent_all = True
            # What was sent near the end is still answered: wait a little for it.
            if pipe.in_flight > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reading), 5)
            reading.cancel()
            writer.close()


async def _count_answers(reader: asyncio.StreamReader, seen: Attack, pipe: _Pipe) -> None:
    answers = _Answers()
    try:
        while not (pipe.sent_all and pipe.in_flight <= 0):
            data = await reader.read(65536)
            if not data:
                return
            for status in answers.feed(data):
                _count(seen.bad_answers, status)
                pipe.in_flight -= 1
    except OSError as exc:
        _count(seen.bad_answers, type(exc).__name__)


async def flood(url: str, query: str, *, seconds: float, rate: int, connections: int) -> Attack:
    """Only the wrong calls: `rate` a second over `connections` keep-alive connections."""
    seen = Attack()
    split = urlsplit(url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    started = time.monotonic()
    per_tick = max(rate // connections // 10, 1)
    await asyncio.gather(
        *(_bad(host, port, query, per_tick, started + seconds, seen) for _ in range(connections))
    )
    seen.seconds = time.monotonic() - started
    return seen


async def attack(
    url: str,
    query: str,
    *,
    seconds: float,
    slow: int = 500,
    bad_rate: int = 1000,
    processes: int = 2,
) -> Attack:
    """Attack the gateway at `url` (from 127.0.0.1) for `seconds`: the slow connections
    here, the wrong calls from `processes` processes of their own (`flood`), so that the
    generator's CPU is not what limits the rate."""
    seen = Attack()
    split = urlsplit(url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    started = time.monotonic()
    until = started + seconds
    floods = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.hostile",
            "flood",
            url,
            query,
            str(seconds),
            str(bad_rate // processes),
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    await asyncio.gather(*(_slow(host, port, query, until, seen) for _ in range(slow)))
    for process in floods:
        out, _ = await process.communicate()
        for status, count in json.loads(out).items():
            seen.bad_answers[status] = seen.bad_answers.get(status, 0) + count
    seen.seconds = seconds  # the rate over the attack, not the floods' start and wind-down
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    seen.flood_cpu_s = children.ru_utime + children.ru_stime
    seen.slow_cpu_s = time.process_time()
    return seen


async def legit(url: str, query: str, *, seconds: float) -> Caller:
    """Ten calls a second with the right secret, one at a time, on one keep-alive session."""
    caller = Caller()
    until = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                async with http.get(
                    f"{url}/hook/trigger?{query}", timeout=aiohttp.ClientTimeout(total=30)
                ) as response:
                    await response.read()
                    _count(caller.statuses, str(response.status))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                _count(caller.statuses, type(exc).__name__)
            caller.latencies_ms.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.1)
    return caller


async def _main(base: str, query: str, seconds: float) -> dict[str, object]:
    """Attack in a subprocess; legitimate callers at 127.0.0.1 and ::1 here."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.hostile", "attack", base, query, str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(1.0)
    other = base.replace("127.0.0.1", "[::1]")
    same, another = await asyncio.gather(
        legit(base, query, seconds=seconds - 2), legit(other, query, seconds=seconds - 2)
    )
    out, _ = await process.communicate()
    return {
        "attack": json.loads(out),
        "legit_same_address": same.summary(),
        "legit_other_address": another.summary(),
    }


if __name__ == "__main__":
    if sys.argv[1] == "attack":
        done = asyncio.run(attack(sys.argv[2], sys.argv[3], seconds=float(sys.argv[4])))
        print(json.dumps(done.summary()))
    elif sys.argv[1] == "flood":
        flooded = asyncio.run(
            flood(
                sys.argv[2],
                sys.argv[3],
                seconds=float(sys.argv[4]),
                rate=int(sys.argv[5]),
                connections=10,
            )
        )
        print(json.dumps(flooded.bad_answers))
    else:
        print(
            json.dumps(asyncio.run(_main(sys.argv[1], sys.argv[2], float(sys.argv[3]))), indent=1)
        )
