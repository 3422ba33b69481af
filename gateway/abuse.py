"""Brute-force protection: a limit on failed authentications per client address."""

from __future__ import annotations

import math
import time

from cachetools import TTLCache

__all__ = ["FailedAuthLimiter"]


class FailedAuthLimiter:
    """Counts 403s per address in fixed windows; past the limit, the address gets 429.

    In-process, so each gateway counts on its own: with N gateways an address gets at most
    N times the limit, still far too few guesses against a 256-bit secret. Behind a proxy,
    every caller shares the proxy's address; raise the limit there.
    """

    def __init__(self, limit: int, window: float = 60.0, max_addresses: int = 100_000) -> None:
        self._limit = limit
        self._window = window
        # Bounded, so a flood from many addresses costs memory once, not forever.
        self._failures: TTLCache[str, tuple[float, int]] = TTLCache(max_addresses, window)

    def blocked_for(self, address: str) -> float:
        """Seconds until `address` may try again (0 when it may now)."""
        if self._limit <= 0:
            return 0.0
        entry = self._failures.get(address)
        if entry is None or entry[1] < self._limit:
            return 0.0
        return max(entry[0] + self._window - time.monotonic(), 0.0)

    def failed(self, address: str) -> None:
        """Record one failed authentication."""
        now = time.monotonic()
        start, count = self._failures.get(address, (now, 0))
        if now - start >= self._window:
            start, count = now, 0
        self._failures[address] = (start, count + 1)

    @staticmethod
    def retry_after(seconds: float) -> str:
        """A Retry-After header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(seconds)))
