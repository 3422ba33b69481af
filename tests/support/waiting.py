"""Waiting for state another process writes at its own pace."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["eventually"]

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, what: str, within: float = 10.0
) -> T:
    """Call `probe` until it returns something other than None; fail after `within` seconds.

    For state another process writes at its own pace (the recorder, a reconnect), where
    there is no event of ours to await.
    """
    deadline = time.monotonic() + within
    while (value := await probe()) is None:
        if time.monotonic() > deadline:
            msg = f"{what} did not happen within {within:g} s"
            raise AssertionError(msg)
        await asyncio.sleep(0.05)
    return value
