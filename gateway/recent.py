"""What the gateways acted on recently: pushed digests, alert groups, deliveries, signatures.

A key is claimed before the command is published and confirmed with its job id after
the broker confirmed it (or released when publishing failed), so twenty identical
alerts arriving together publish one command.

With ``TRIGGERS_REDIS_URL`` the keys live in Redis (`RedisRecentEvents`), so every gateway
sharing it agrees: a claim is one atomic ``SET NX PX``, and a storm spread over several
gateways acts once. Without it they live in this process (`MemoryRecentEvents`), which is
exact for one gateway; each of several would then remember only what it saw.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from cachetools import TLRUCache

from gateway.shared_state import RedisOutage

__all__ = ["PENDING", "MemoryRecentEvents", "RecentEvents", "RedisRecentEvents", "open_recent"]

# The job id of a claim whose command is still being published.
PENDING = "pending"


class RecentEvents(Protocol):
    """Keys with a time to live each: what was acted on, and by which job."""

    name: str

    async def seen(self, key: str) -> str | None:
        """The job id recorded for `key` (or `PENDING`), if it has not expired."""
        ...

    async def claim(self, key: str, ttl: float) -> str | None:
        """Record `key` for `ttl` seconds unless present; return the earlier job id if so."""
        ...

    async def confirm(self, key: str, job_id: str, ttl: float) -> None:
        """Attach the published job's id to a claimed key, restarting its time to live."""
        ...

    async def release(self, key: str) -> None:
        """Give up this gateway's pending claim (its command was not published).

        A key another gateway claimed, or that a job was confirmed under, stays.
        """
        ...

    async def forget(self, key: str) -> None:
        """Forget a key whoever recorded it: a later event supersedes it."""
        ...


def _expires(key: str, value: tuple[str, float], now: float) -> float:
    return now + value[1]


def short_key(key: str) -> str:
    """`key`, or its SHA-256 when longer than `_MAX_KEY` (an alert group key is the sender's)."""
    if len(key) <= _MAX_KEY:
        return key
    kind = key.split(":", 1)[0]
    return f"{kind}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


# Longer keys are kept under their SHA-256, so each entry is small whatever the sender sent.
_MAX_KEY = 200


class MemoryRecentEvents:
    """Keys in this process, bounded in number (oldest dropped first) and in size (hashed)."""

    name = "memory"

    def __init__(self, maxsize: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._cache: TLRUCache[str, tuple[str, float]] = TLRUCache(
            maxsize=maxsize, ttu=_expires, timer=clock
        )

    async def seen(self, key: str) -> str | None:
        """The job id recorded for `key` (or `PENDING`), if it has not expired."""
        found = self._cache.get(short_key(key))
        return found[0] if found is not None else None

    async def claim(self, key: str, ttl: float) -> str | None:
        """Record `key` for `ttl` seconds unless present; return the earlier job id if so."""
        earlier = await self.seen(key)
        if earlier is not None:
            return earlier
        if ttl > 0:
            self._cache[short_key(key)] = (PENDING, ttl)
        return None

    async def confirm(self, key: str, job_id: str, ttl: float) -> None:
        """Attach the published job's id to a claimed key, restarting its time to live."""
        if ttl > 0:
            self._cache[short_key(key)] = (job_id, ttl)

    async def release(self, key: str) -> None:
        """Drop the key if it is still a pending claim."""
        if await self.seen(key) == PENDING:
            self._cache.pop(short_key(key), None)

    async def forget(self, key: str) -> None:
        """Drop the key."""
        self._cache.pop(short_key(key), None)


# KEYS[1]: the key; ARGV[1]: this gateway's pending marker; ARGV[2]: time to live in ms.
# Returns the value already there, or false after recording the marker.
_CLAIM = """
local earlier = redis.call('GET', KEYS[1])
if earlier then return earlier end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# Deletes KEYS[1] only while it holds ARGV[1], this gateway's pending marker.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A pending claim's value in Redis: this prefix and a random token of the gateway's.
_MARKER = f"{PENDING}:"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisRecentEvents:
    """Keys in Redis, shared by every gateway using the same URL and prefix.

    A pending claim holds a marker of this gateway's own (``pending:<random>``), so
    `release` deletes only a claim this gateway made and still holds: never a key that
    another gateway claimed or confirmed a job under, even after this claim expired.
    When Redis does not answer, a call uses this process's memory instead (logged as
    ``gateway.recent_unavailable``); confirms, releases and forgets are written to both,
    so that memory knows what this gateway acted on when Redis goes away.
    """

    name = "redis"

    def __init__(self, redis: Any, *, prefix: str = "container-triggers:") -> None:
        self._redis = redis
        self._claim: Any = redis.register_script(_CLAIM)
        self._release: Any = redis.register_script(_RELEASE)
        self._prefix = f"{prefix}recent:"
        self._marker = f"{_MARKER}{uuid.uuid4().hex}"
        self._memory = MemoryRecentEvents()
        self._outage = RedisOutage("gateway.recent_unavailable")

    def _name(self, key: str) -> str:
        return self._prefix + short_key(key)

    @staticmethod
    def _job_id(value: bytes | None) -> str | None:
        if value is None:
            return None
        job_id = value.decode()
        return PENDING if job_id.startswith(_MARKER) else job_id

    async def seen(self, key: str) -> str | None:
        """``GET``."""

        async def in_redis() -> str | None:
            return self._job_id(await self._redis.get(self._name(key)))

        return await self._outage.read("seen", in_redis, lambda: self._memory.seen(key))

    async def claim(self, key: str, ttl: float) -> str | None:
        """``GET``, then ``SET PX`` when absent, in one Lua call: one caller wins."""
        if ttl <= 0:
            return await self.seen(key)

        async def in_redis() -> str | None:
            args = [self._marker, _ms(ttl)]
            return self._job_id(await self._claim(keys=[self._name(key)], args=args))

        return await self._outage.read("claim", in_redis, lambda: self._memory.claim(key, ttl))

    async def confirm(self, key: str, job_id: str, ttl: float) -> None:
        """``SET PX`` with the job id, over the marker."""
        if ttl > 0:
            name = self._name(key)
            await self._outage.attempt(
                "confirm", lambda: self._redis.set(name, job_id, px=_ms(ttl))
            )
        await self._memory.confirm(key, job_id, ttl)

    async def release(self, key: str) -> None:
        """Delete the key while it holds this gateway's marker (compare and delete)."""
        name = self._name(key)
        await self._outage.attempt(
            "release", lambda: self._release(keys=[name], args=[self._marker])
        )
        await self._memory.release(key)

    async def forget(self, key: str) -> None:
        """``DEL``."""
        await self._outage.attempt("forget", lambda: self._redis.delete(self._name(key)))
        await self._memory.forget(key)


def open_recent(redis: Any | None, prefix: str) -> RecentEvents:
    """Keys in Redis when a client is given (`gateway.shared_state.open_redis`), else here."""
    if redis is not None:
        return RedisRecentEvents(redis, prefix=prefix)
    return MemoryRecentEvents()
