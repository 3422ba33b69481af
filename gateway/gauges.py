"""A reading of shared state for ``/metrics``, taken at most once per TTL, one at a time."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

__all__ = ["SharedGauges"]


class SharedGauges:
    """Runs `read` (which sets gauges) at most once per `ttl` seconds.

    A scrape within `ttl` of the last reading answers the values it left; scrapes that
    come while a reading is on its way wait for it instead of starting another. A failed
    reading counts too: a broker or store that is down is asked again after `ttl`.
    """

    def __init__(self, read: Callable[[], Awaitable[None]], ttl: float) -> None:
        self._read = read
        self._ttl = ttl
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return asyncio.get_running_loop().time() - self._read_at < self._ttl

    async def refresh(self) -> None:
        """Read when the last reading is older than `ttl`."""
        if self._fresh():
            return
        async with self._lock:
            if self._fresh():
                return  # read by the scrape this one waited for
            try:
                await self._read()
            finally:
                self._read_at = asyncio.get_running_loop().time()
