"""Triggers as the hot path reads them: a short cache over the store, one read per miss.

A cache entry lives `ttl` seconds; changes made anywhere (CLI, admin API, another gateway)
evict it sooner through the store's change feed (`gateway.invalidation`). When an entry is
missing under load, one read goes to the store and the calls arriving meanwhile wait for
it (single flight). Unknown ids are cached too (as None), so a flood of one made-up id
costs one read per `ttl`.
"""

from __future__ import annotations

import asyncio
import time

from cachetools import TTLCache

from shared.store import TriggerStore
from shared.triggers import Trigger

__all__ = ["TriggerCache"]


class TriggerCache:
    """Cached `TriggerStore.get`, with single flight and forced re-reads that are bounded."""

    def __init__(
        self, store: TriggerStore, *, ttl: float, refresh_after: float, maxsize: int = 10_000
    ) -> None:
        self._store = store
        self._entries: TTLCache[str, tuple[Trigger | None, float]] = TTLCache(maxsize, ttl)
        self._lookups: dict[str, asyncio.Future[Trigger | None]] = {}
        self._refresh_after = refresh_after
        # Bumped by every invalidation: a read that started before one is not cached.
        self._generation = 0

    async def get(self, trigger_id: str) -> Trigger | None:
        """The trigger, from the cache when it holds it."""
        entry = self._entries.get(trigger_id)
        if entry is not None:
            return entry[0]
        return await self._read(trigger_id)

    async def refreshed(self, trigger_id: str) -> Trigger | None:
        """The trigger read again, unless the cached copy is younger than `refresh_after`.

        After a failed check, a copy read before a rotation elsewhere may be what refused
        the new secret; the bound keeps repeated wrong guesses from reading the store
        each time (unknown and live ids alike, so timing tells them apart no better).
        """
        entry = self._entries.get(trigger_id)
        if entry is not None and time.monotonic() - entry[1] < self._refresh_after:
            return entry[0]
        self._entries.pop(trigger_id, None)
        return await self._read(trigger_id)

    def invalidate(self, trigger_id: str | None = None) -> None:
        """Forget one trigger (it changed), or all of them (changes may have been missed)."""
        self._generation += 1
        if trigger_id is None:
            self._entries.clear()
        else:
            self._entries.pop(trigger_id, None)

    async def _read(self, trigger_id: str) -> Trigger | None:
        pending = self._lookups.get(trigger_id)
        if pending is not None:
            return await asyncio.shield(pending)
        generation = self._generation
        pending = asyncio.ensure_future(self._store.get(trigger_id))
        self._lookups[trigger_id] = pending
        try:
            trigger = await asyncio.shield(pending)
        finally:
            self._lookups.pop(trigger_id, None)
        if generation == self._generation:
            self._entries[trigger_id] = (trigger, time.monotonic())
        return trigger
