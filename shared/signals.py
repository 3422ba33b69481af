"""SIGTERM and SIGINT: the one place a process says what they do."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator

__all__ = ["STOP_SIGNALS", "on_stop_signal", "until_signalled"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def on_stop_signal(callback: Callable[[], object]) -> Iterator[None]:
    """Call `callback` on SIGTERM or SIGINT while inside; the default handling after."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, callback)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def until_signalled(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """Start, wait for SIGTERM or SIGINT, then stop (also when the wait is cancelled).

    The signals get their default handling back before `stop`: a second one during a
    graceful stop ends the process.
    """
    done = asyncio.Event()
    started = False
    try:
        with on_stop_signal(done.set):
            await start()
            started = True
            await done.wait()
    finally:
        if started:
            await stop()
