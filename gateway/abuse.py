"""Brute-force protection: a limit on failed authentications per client address and trigger."""

from __future__ import annotations

import math
import time

from cachetools import TTLCache

__all__ = ["FailedAuthLimiter"]


class FailedAuthLimiter:
    """Counts failures per key (an address and a trigger id) in fixed windows.

    Past the limit, a wrong secret is answered 429 instead of 403 and costs no store read;
    a correct secret is never refused, so guesses at one trigger from a shared address (a
    proxy, NAT, a CI egress) cannot lock out the callers that hold the secret. The check
    and the count are one step with no await between them, so concurrent guesses cannot
    race past the limit. In-process: with N gateways a key gets at most N times the limit,
    still far too few guesses against a 256-bit secret.
    """

    def __init__(self, limit: int, window: float = 60.0, max_keys: int = 100_000) -> None:
        self._limit = limit
        self._window = window
        # Bounded, so a flood of many keys costs memory once, not forever.
        self._failures: TTLCache[str, tuple[float, int]] = TTLCache(max_keys, window)

    def blocked_for(self, key: str) -> float:
        """Seconds until `key`'s failures are forgotten, when past the limit (else 0)."""
        if self._limit <= 0:
            return 0.0
        entry = self._failures.get(key)
        if entry is None or entry[1] < self._limit:
            return 0.0
        return max(entry[0] + self._window - time.monotonic(), 0.0)

    def failed(self, key: str) -> float:
        """Record one failure; the seconds to wait when it is past the limit, else 0."""
        if self._limit <= 0:
            return 0.0
        now = time.monotonic()
        start, count = self._failures.get(key, (now, 0))
        if now - start >= self._window:
            start, count = now, 0
        self._failures[key] = (start, count + 1)
        if count < self._limit:
            return 0.0
        return max(start + self._window - now, 0.001)

    @staticmethod
    def retry_after(seconds: float) -> str:
        """A Retry-After header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(seconds)))
