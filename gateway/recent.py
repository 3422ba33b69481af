"""What this gateway acted on recently: pushed digests, alert groups, deliveries, signatures.

A key is claimed before the command is published and confirmed with its job id after
the broker confirmed it (or released when publishing failed), so twenty identical
alerts arriving together publish one command. The memory is this process's: with
several gateways behind a load balancer each remembers only what it saw (see README).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cachetools import TLRUCache

__all__ = ["PENDING", "RecentEvents"]

# The job id of a claim whose command is still being published.
PENDING = "pending"


def _expires(key: str, value: tuple[str, float], now: float) -> float:
    return now + value[1]


class RecentEvents:
    """Keys with a time to live each, bounded in number (oldest dropped first)."""

    def __init__(self, maxsize: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._cache: TLRUCache[str, tuple[str, float]] = TLRUCache(
            maxsize=maxsize, ttu=_expires, timer=clock
        )

    def seen(self, key: str) -> str | None:
        """The job id recorded for `key` (or `PENDING`), if it has not expired."""
        found = self._cache.get(key)
        return found[0] if found is not None else None

    def claim(self, key: str, ttl: float) -> str | None:
        """Record `key` for `ttl` seconds unless present; return the earlier job id if so."""
        earlier = self.seen(key)
        if earlier is not None:
            return earlier
        if ttl > 0:
            self._cache[key] = (PENDING, ttl)
        return None

    def confirm(self, key: str, job_id: str, ttl: float) -> None:
        """Attach the published job's id to a claimed key, restarting its time to live."""
        if ttl > 0:
            self._cache[key] = (job_id, ttl)

    def release(self, key: str) -> None:
        """Forget a key: its command was not published, or a later event supersedes it."""
        self._cache.pop(key, None)
