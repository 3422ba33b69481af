"""Trigger changes reach every gateway's cache within a second: revocations, rotations,
policy changes made by the CLI, the admin API or another gateway.

Each change is a row of ``trigger_changes`` (written by the store in the change's own
transaction). On PostgreSQL that transaction also notifies the ``triggers_changes`` channel; every gateway
process listens on a connection of its own and evicts the trigger as the notification
arrives (a few milliseconds after the change commits). Every process also follows the
table, reading what is new every `interval` seconds (0.25 s: one indexed range read):
the only way on SQLite (several processes sharing a file), and on PostgreSQL the safety
net, every `safety_interval` (5 s) while the push works and every `interval` while it is
down. A lost listening connection is logged once and opened again with a growing pause
(0.5 s to 10 s); whatever changed meanwhile is read by the poll at once.
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
from shared.settings import prune_interval
from shared.store import TriggerStore

__all__ = ["CHANGE_POLL_INTERVAL", "follow_changes", "periodically", "prune_audit_forever"]

log = structlog.get_logger("triggers.gateway")

CHANGE_POLL_INTERVAL = 0.25
# While changes are pushed, the poll only catches what a notification could not carry.
SAFETY_POLL_INTERVAL = 5.0
# Listening again after a lost connection: the first pause, doubled up to the last.
LISTEN_RETRY_FIRST = 0.5
LISTEN_RETRY_MAX = 10.0
# How often a silent listening connection is asked whether it still answers.
LISTEN_PROBE_EVERY = 5.0


async def _follow(
    store: TriggerStore, cache: TriggerCache, interval: float, safety_interval: float
) -> None:
    outage = RedisOutage("gateway.changes_unavailable", pause=0)
    push = _Push()
    listening = asyncio.create_task(_listen(store, cache, push))
    last: int | None = None
    try:
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
            await push.wait(safety_interval if push.up else interval)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening


class _Push:
    """Whether changes are pushed now; `wake` makes the poll read at once (the push changed)."""

    def __init__(self) -> None:
        self.up = False
        self._wake = asyncio.Event()

    def changed(self, *, up: bool) -> None:
        self.up = up
        self._wake.set()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()


async def _listen(store: TriggerStore, cache: TriggerCache, push: _Push) -> None:
    """Evict each trigger as its change is notified; listen again whenever the connection is lost."""
    pause = LISTEN_RETRY_FIRST
    failing = False
    while True:
        try:
            listener = await store.listen_changes(cache.invalidate)
        except Exception as exc:  # the database is down or refuses: the poll covers meanwhile
            if not failing:
                log.warning(
                    "gateway.change_push_unavailable", error=repr(exc)[:200], retry_in=pause
                )
            failing = True
            await asyncio.sleep(pause)
            pause = min(pause * 2, LISTEN_RETRY_MAX)
            continue
        if listener is None:
            return  # SQLite: the poll is the way
        log.info("gateway.change_push_listening", after_failures=failing)
        failing, pause = False, LISTEN_RETRY_FIRST
        push.changed(up=True)  # what changed while nobody listened: read by the poll now
        try:
            await listener.watch(LISTEN_PROBE_EVERY)
        finally:
            push.changed(up=False)
            await listener.close()
        log.warning("gateway.change_push_lost", fallback_poll=CHANGE_POLL_INTERVAL)
        failing = True


async def _prune(store: TriggerStore, retention: float) -> None:
    every = prune_interval(retention)
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
    store: TriggerStore,
    cache: TriggerCache,
    interval: float = CHANGE_POLL_INTERVAL,
    safety_interval: float = SAFETY_POLL_INTERVAL,
) -> contextlib.AbstractAsyncContextManager[None]:
    """Evict changed triggers from `cache` while the context is open."""
    return _in_background(_follow(store, cache, interval, safety_interval))


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
