"""Trigger changes reach every gateway's cache within a second: revocations, rotations,
policy changes made by the CLI, the admin API or another gateway.

Each change is a row of ``trigger_changes`` (written by the store with the change itself).
Every gateway process follows that table, reading what is new every `interval` seconds
(0.25 s: one indexed range read, four a second), and evicts the changed triggers from its
cache (`gateway.lookup`), so the next call reads them fresh. The bound is the interval
plus one read; this works alike for SQLite (several processes sharing a file) and
PostgreSQL (any number of machines).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from typing import Any

import structlog

from gateway.lookup import TriggerCache
from gateway.shared_state import RedisOutage
from shared.messages import utcnow
from shared.store import TriggerStore

__all__ = ["CHANGE_POLL_INTERVAL", "follow_changes", "periodically", "prune_audit_forever"]

log = structlog.get_logger("triggers.gateway")

CHANGE_POLL_INTERVAL = 0.25


async def _follow(store: TriggerStore, cache: TriggerCache, interval: float) -> None:
    outage = RedisOutage("gateway.changes_unavailable", pause=0)
    last: int | None = None
    while True:
        try:
            if last is None:
                last, _ = await store.changes_since(None)
                # Whatever changed before we knew where the table stood is read afresh.
                cache.invalidate()
            else:
                last, changed = await store.changes_since(last)
                for trigger_id in changed:
                    cache.invalidate(trigger_id)
        except Exception as exc:  # the store may be down: the cache's TTL still bounds it
            outage.failed("changes_since", exc)
        await asyncio.sleep(interval)


async def _prune(store: TriggerStore, retention: float) -> None:
    # Often enough that the table never holds much more than the retention.
    every = min(max(retention / 10, 1.0), 3600.0)
    while True:
        try:
            removed = await store.prune_audit(utcnow() - timedelta(seconds=retention))
            if removed:
                log.info("gateway.audit_pruned", removed=removed)
        except Exception as exc:  # the store may be down for a while; try next round
            log.warning("gateway.audit_prune_failed", error=repr(exc)[:200])
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def _in_background(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `work` as a task while the context is open; cancel it on the way out."""
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def follow_changes(
    store: TriggerStore, cache: TriggerCache, interval: float = CHANGE_POLL_INTERVAL
) -> contextlib.AbstractAsyncContextManager[None]:
    """Evict changed triggers from `cache` while the context is open."""
    return _in_background(_follow(store, cache, interval))


def prune_audit_forever(
    store: TriggerStore, retention: float
) -> contextlib.AbstractAsyncContextManager[None]:
    """Delete audit entries older than `retention` seconds while the context is open."""
    return _in_background(_prune(store, retention))


def periodically(
    interval: float, tick: Callable[[], None]
) -> contextlib.AbstractAsyncContextManager[None]:
    """Call `tick` every `interval` seconds while the context is open."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            tick()

    return _in_background(loop())
