"""The audit trail: one entry per trigger call, never the secret, written in batches.

Writing is off the hot path: `AuditLog` keeps entries in a bounded in-memory queue that a
background task flushes every `interval` seconds or every `batch` entries, in one
multi-row insert. When the store is down the entries stay queued; when the queue is full,
new entries are dropped and counted (`audit.dropped`) rather than slowing calls down. A
clean shutdown flushes what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol

import msgspec
import structlog

__all__ = ["AuditEntry", "AuditLog", "AuditSink", "Outcome"]

log = structlog.get_logger("triggers.audit")

# accepted: published (202); ignored: authenticated but held back by the cooldown (200);
# rejected: any 4xx/5xx answer, with the error code as the reason.
Outcome = Literal["accepted", "ignored", "rejected"]


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one call, who made it and from where."""

    at: datetime
    outcome: Outcome
    status: int
    trigger_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    method: str | None = None
    remote: str | None = None
    user_agent: str | None = None
    job_id: str | None = None
    request_id: str | None = None
    id: int | None = None


class AuditSink(Protocol):
    """Where entries go (the trigger store)."""

    async def record_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append entries in one write."""
        ...


class AuditLog:
    """A bounded queue of entries and the task that writes them."""

    def __init__(
        self,
        store: AuditSink,
        *,
        interval: float = 0.5,
        max_pending: int = 10_000,
        batch: int = 500,
    ) -> None:
        self._store = store
        self._interval = interval
        self._max_pending = max_pending
        self._batch = batch
        self._pending: deque[AuditEntry] = deque()
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def record(self, entry: AuditEntry) -> None:
        """Queue an entry; never waits."""
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("audit.dropped", dropped=self.dropped)
            return
        self._pending.append(entry)
        if len(self._pending) >= self._batch:
            self._wake.set()

    async def flush(self) -> None:
        """Write everything queued now; entries stay queued if the store fails."""
        async with self._write_lock:
            while self._pending:
                count = min(len(self._pending), self._batch)
                batch = [self._pending.popleft() for _ in range(count)]
                try:
                    await self._store.record_audit(batch)
                except Exception as exc:  # keep the entries, retry next round
                    self._pending.extendleft(reversed(batch))
                    log.warning(
                        "audit.write_failed", pending=len(self._pending), error=repr(exc)[:200]
                    )
                    return

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.flush()

    def start(self) -> None:
        """Begin flushing in the background."""
        self._task = asyncio.create_task(self._run(), name="audit-flush")

    async def close(self) -> None:
        """Stop the task and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
