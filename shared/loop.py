"""The event loop every entry point runs on (uvloop when it is installed, else asyncio's),
and the garbage collector's settings of the long-running services."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["new_event_loop", "run", "tune_gc"]

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop (the `fast` extra) or the standard one; both behave the same for us."""
    try:
        import uvloop  # noqa: PLC0415 - optional: the standard loop works, only slower
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on `new_event_loop()`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


# A young-generation collection after this many allocations net (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Fewer garbage collections for a service process; called once, before it serves.

    Every call and command allocates many short-lived objects (futures, tasks, frames,
    messages) that reference counting frees by itself; with CPython's default a young
    collection still runs every 700 allocations and walks whatever is alive, which cost
    about 5 % of the gateway's and the worker's CPU per command (paired bench runs).
    What start-up allocated (modules, settings, the app) is moved out of the collector's
    reach (`gc.freeze`) and a young collection runs every 50,000 allocations. Reference
    cycles are still collected, only later: a few MB at most.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
