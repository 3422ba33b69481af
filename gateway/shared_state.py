"""The one Redis client through which the gateways share state, and how its failures show.

With ``TRIGGERS_REDIS_URL`` the rate limits and cooldowns (`gateway.limits`) and the
recently acted-on events (`gateway.recent`) live in Redis, through one client per gateway
process. Each of them falls back to its in-process state for a call that Redis does not
answer quickly, so an outage degrades the shared state to a per-gateway one instead of
failing trigger calls; `RedisOutage` says so in the log without a line per call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

__all__ = ["RedisOutage", "open_redis"]

log = structlog.get_logger("triggers.gateway")

T = TypeVar("T")


def open_redis(url: str, *, timeout: float = 0.5) -> Any:
    """A `redis.asyncio` client (it connects on first use); the caller closes it (``aclose``).

    One retry without backoff, so a pooled connection that Redis closed is replaced at
    once, but a Redis that does not answer costs a call at most twice the timeout.
    """
    import redis.asyncio as redis  # noqa: PLC0415 - only shared-state deployments need it
    from redis.asyncio.retry import Retry  # noqa: PLC0415 - as above
    from redis.backoff import NoBackoff  # noqa: PLC0415 - as above

    return redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )


class RedisOutage:
    """Redis failures of one component: a short break from Redis, and a log line per interval.

    (The gateway's error middleware uses it for store and broker outages too, for the log.)

    After a failed call Redis is left alone for `pause` seconds (`available` is False):
    the component uses its in-process state straight away instead of waiting for a
    timeout on every call while Redis hangs or is unreachable, then tries Redis again.
    Failures are logged as `event`, the first at once, then one line per `interval`
    counting the failures since the previous one. Only the exception's repr is logged
    (Redis errors name the host and port, never the URL's password).
    """

    def __init__(
        self,
        event: str,
        *,
        interval: float = 30.0,
        pause: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._event = event
        self._interval = interval
        self._pause = pause
        self._clock = clock
        self._next_line = float("-inf")
        self._unlogged = 0
        self._paused_until = float("-inf")

    @property
    def available(self) -> bool:
        """Whether to call Redis now: no call failed within the last `pause` seconds."""
        return self._clock() >= self._paused_until

    def failed(self, operation: str, exc: Exception) -> None:
        """Count one failed call and pause; log it unless a line was written within the interval."""
        self._unlogged += 1
        now = self._clock()
        self._paused_until = now + self._pause
        if now < self._next_line:
            return
        log.warning(
            self._event,
            operation=operation,
            error=repr(exc)[:200],
            failures=self._unlogged,
            next_report_in=self._interval,
            redis_paused_for=self._pause,
        )
        self._unlogged = 0
        self._next_line = now + self._interval

    async def read(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        fallback: Callable[[], Awaitable[T]],
    ) -> T:
        """Redis's answer, or the in-process `fallback`'s while paused or when it fails."""
        if self.available:
            try:
                return await call()
            except Exception as exc:  # any Redis failure degrades to the in-process state
                self.failed(operation, exc)
        return await fallback()

    async def attempt(self, operation: str, call: Callable[[], Awaitable[object]]) -> None:
        """Make a Redis write that may fail (logged), unless paused: its key expires anyway."""
        if not self.available:
            return
        try:
            await call()
        except Exception as exc:  # any Redis failure; the caller keeps its memory up to date
            self.failed(operation, exc)
