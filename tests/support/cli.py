"""Running the `triggers` command as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["created_scale_trigger", "run_cli", "tailing", "triggers_cli"]


def triggers_cli() -> list[str]:
    """The installed console script, next to this interpreter."""
    return [str(Path(sys.executable).with_name("triggers"))]


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run `triggers ARGS` without blocking the loop (a gateway may run in it); bounded."""
    process = await asyncio.create_subprocess_exec(
        *triggers_cli(),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def created_scale_trigger(env: dict[str, str]) -> str:
    """`triggers create` a scaling trigger for demo/shop/web; the query of its call URL."""
    code, out, err = await run_cli(
        env, "create", "--cluster", "demo", "--app", "shop", "--action", "scale",
        "--service", "web", "--json",
    )  # fmt: skip
    assert code == 0, err
    return str(json.loads(out)["url"].split("?", 1)[1])


@contextlib.asynccontextmanager
async def tailing(env: dict[str, str], *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`triggers tail ARGS` once it says it is waiting for results (subscribed); killed on
    the way out if it has not ended. Read what it printed with ``communicate()``."""
    tail = await asyncio.create_subprocess_exec(
        *triggers_cli(), "tail", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert tail.stderr is not None
        async with asyncio.timeout(30):
            while b"Waiting for results" not in await tail.stderr.readline():
                pass
        yield tail
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
