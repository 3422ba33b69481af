"""Per-trigger rate limits and cooldowns, in state every gateway agrees on.

With ``TRIGGERS_REDIS_URL`` the state lives in Redis, so any number of gateways behind a
load balancer count one trigger's calls together; each check is one atomic round trip
(a Lua script for the rate limit, ``SET NX PX`` for the cooldown), timed by Redis's own
clock. Without it the state lives in this process, which is right for the single-gateway
default (SQLite store) and wrong for several gateways: each would allow the full rate.

The rate limit is GCRA (a token bucket without a refill timer): `per_minute` calls may
come in a burst, after which one call is allowed every ``60 / per_minute`` seconds.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

from gateway.shared_state import RedisOutage

__all__ = ["CallLimits", "MemoryCallLimits", "RedisCallLimits", "open_limits"]

_WINDOW = 60.0  # seconds: the rate limit is per minute

# KEYS[1]: the trigger's key; ARGV[1]: ms between calls; ARGV[2]: window in ms.
# Returns -1 when the call is allowed, else the milliseconds to wait.
_GCRA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
if next_tat - now > window then
    return math.ceil(next_tat - now - window)
end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil(next_tat - now))
return -1
"""


class CallLimits(Protocol):
    """Shared counters for the policy checks of the gateway."""

    name: str

    async def take_rate(self, trigger_id: str, per_minute: int) -> float | None:
        """Count one call; None when allowed, else the seconds until one would be."""
        ...

    async def claim_cooldown(self, trigger_id: str, seconds: int) -> float | None:
        """Start the cooldown; None when it was free, else the seconds it still runs."""
        ...

    async def release_cooldown(self, trigger_id: str) -> None:
        """End a cooldown early (the call it was claimed for was not accepted)."""
        ...


class MemoryCallLimits:
    """State in this process: exact for one gateway, per-gateway for several."""

    name = "memory"

    def __init__(self, max_entries: int = 100_000) -> None:
        self._tat: dict[str, float] = {}
        self._cooldown_until: dict[str, float] = {}
        self._max_entries = max_entries

    def _prune(self, table: dict[str, float], now: float) -> None:
        # Expired entries are dropped only when the table grows, keeping checks O(1).
        if len(table) >= self._max_entries:
            for key in [k for k, until in table.items() if until <= now]:
                del table[key]

    async def take_rate(self, trigger_id: str, per_minute: int) -> float | None:
        """GCRA in memory."""
        now = time.monotonic()
        interval = _WINDOW / per_minute
        tat = max(self._tat.get(trigger_id, now), now)
        if tat + interval - now > _WINDOW:
            return tat + interval - now - _WINDOW
        self._prune(self._tat, now)
        self._tat[trigger_id] = tat + interval
        return None

    async def claim_cooldown(self, trigger_id: str, seconds: int) -> float | None:
        """Claim unless a cooldown is running."""
        now = time.monotonic()
        until = self._cooldown_until.get(trigger_id, 0.0)
        if until > now:
            return until - now
        self._prune(self._cooldown_until, now)
        self._cooldown_until[trigger_id] = now + seconds
        return None

    async def release_cooldown(self, trigger_id: str) -> None:
        """Forget the cooldown."""
        self._cooldown_until.pop(trigger_id, None)


class RedisCallLimits:
    """State in Redis, shared by every gateway using the same URL and prefix.

    When Redis does not answer within a short timeout, the check falls back to this
    process's state for that call (logged), so a Redis outage degrades the limits to
    per-gateway ones instead of stopping every trigger.
    """

    name = "redis"

    def __init__(self, redis: Any, *, prefix: str = "container-triggers:") -> None:
        self._redis = redis
        self._gcra: Any = redis.register_script(_GCRA)
        self._prefix = prefix
        self._fallback = MemoryCallLimits()
        self._outage = RedisOutage("gateway.limits_unavailable")

    async def take_rate(self, trigger_id: str, per_minute: int) -> float | None:
        """GCRA in one Lua call."""

        async def in_redis() -> float | None:
            wait_ms = int(
                await self._gcra(
                    keys=[f"{self._prefix}rate:{trigger_id}"],
                    args=[math.ceil(_WINDOW * 1000 / per_minute), int(_WINDOW * 1000)],
                )
            )
            return None if wait_ms < 0 else wait_ms / 1000

        return await self._outage.read(
            "take_rate", in_redis, lambda: self._fallback.take_rate(trigger_id, per_minute)
        )

    async def claim_cooldown(self, trigger_id: str, seconds: int) -> float | None:
        """``SET NX PX``: exactly one caller wins the cooldown."""
        key = f"{self._prefix}cooldown:{trigger_id}"

        async def in_redis() -> float | None:
            if await self._redis.set(key, "1", nx=True, px=seconds * 1000):
                return None
            return max(int(await self._redis.pttl(key)), 0) / 1000

        return await self._outage.read(
            "claim_cooldown", in_redis, lambda: self._fallback.claim_cooldown(trigger_id, seconds)
        )

    async def release_cooldown(self, trigger_id: str) -> None:
        """Delete the cooldown key."""
        key = f"{self._prefix}cooldown:{trigger_id}"
        await self._outage.attempt("release_cooldown", lambda: self._redis.delete(key))
        await self._fallback.release_cooldown(trigger_id)


def open_limits(redis: Any | None, prefix: str) -> CallLimits:
    """Limits in Redis when a client is given (`gateway.shared_state.open_redis`), else here."""
    if redis is not None:
        return RedisCallLimits(redis, prefix=prefix)
    return MemoryCallLimits()
