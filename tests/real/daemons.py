"""Real daemons the tests start themselves: on 127.0.0.1, with their own config and data
directory, stopped by PID at the end even when the test fails."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from structlog.testing import capture_logs

__all__ = ["HookCalls", "hook_calls", "running_daemon"]


@contextlib.asynccontextmanager
async def running_daemon(
    command: Sequence[str], log: Path, ready_url: str, within: float = 30.0
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """Start `command` (its output in `log`), wait until `ready_url` answers 200, and stop
    it by its PID afterwards: SIGTERM, then SIGKILL if it lingers."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(within):
            while True:
                if process.poll() is not None:
                    msg = f"{command[0]} exited with {process.returncode}; see {log}"
                    raise AssertionError(msg)
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(ready_url) as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class HookCalls:
    """The gateway's ``gateway.request`` lines for trigger calls, as the in-process gateway
    writes them: what each call from the sender came to."""

    def __init__(self, logs: list[dict[str, Any]]) -> None:
        self._logs = logs

    @property
    def lines(self) -> list[dict[str, Any]]:
        """Every trigger call so far, oldest first."""
        return [
            e
            for e in self._logs
            if e["event"] == "gateway.request" and e["path"] == "/hook/trigger"
        ]

    def where(self, *, about: str = "", **fields: object) -> list[dict[str, Any]]:
        """The calls whose log line has these field values (and `about` in its detail)."""
        return [
            e
            for e in self.lines
            if all(e.get(k) == v for k, v in fields.items()) and about in e.get("detail", "")
        ]

    async def wait(
        self, count: int = 1, within: float = 30.0, *, about: str = "", **fields: object
    ) -> list[dict[str, Any]]:
        """Wait until at least `count` calls have these field values; return them."""
        try:
            async with asyncio.timeout(within):
                while len(found := self.where(about=about, **fields)) < count:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            seen = [(e.get("status"), e.get("outcome"), e.get("reason")) for e in self.lines]
            msg = f"no {count} calls with {fields} within {within:g} s; calls: {seen}"
            raise AssertionError(msg) from None
        return found


@contextlib.contextmanager
def hook_calls() -> Iterator[HookCalls]:
    """Capture the gateway's log lines for the duration of the block."""
    with capture_logs() as logs:
        yield HookCalls(logs)  # type: ignore[arg-type]  # structlog types them as MutableMapping
