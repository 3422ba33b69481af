"""Write-behind: items queued in memory, written in batches by one background task.

Used for what a call must leave behind but need not wait for: the audit trail and the
`accepted` record of a job. A call only appends to a bounded in-memory queue; a task
writes the queue every `interval` seconds, or as soon as `batch` items are waiting, in
one multi-row write. When the store is down the items stay queued; when the queue is
full, new items are dropped and counted (`<name>.dropped`) rather than slowing calls
down. A clean shutdown writes what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Generic, TypeVar

import structlog

__all__ = ["WriteBehind"]

log = structlog.get_logger("triggers.batch")

T = TypeVar("T")


class WriteBehind(Generic[T]):
    """A bounded queue of items and the task that writes them in batches."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[None]],
        *,
        name: str,
        interval: float = 0.5,
        max_pending: int = 10_000,
        batch: int = 500,
    ) -> None:
        self._write = write
        self._name = name
        self._interval = interval
        self._max_pending = max_pending
        self._batch = batch
        self._pending: deque[T] = deque()
        # The batch being written: still "pending" for readers until the write returns.
        self._writing: Sequence[T] = ()
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def record(self, item: T) -> None:
        """Queue an item; never waits."""
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(f"{self._name}.dropped", dropped=self.dropped)
            return
        self._pending.append(item)
        if len(self._pending) >= self._batch:
            self._wake.set()

    def unwritten(self) -> Iterator[T]:
        """The items not written yet (queued, or in the write under way), oldest first."""
        yield from self._writing
        yield from self._pending

    async def flush(self) -> None:
        """Write everything queued now; items stay queued if the store fails."""
        async with self._write_lock:
            while self._pending:
                count = min(len(self._pending), self._batch)
                batch = [self._pending.popleft() for _ in range(count)]
                self._writing = batch
                try:
                    await self._write(batch)
                except Exception as exc:  # keep the items, retry next round
                    self._pending.extendleft(reversed(batch))
                    log.warning(
                        f"{self._name}.write_failed",
                        pending=len(self._pending),
                        error=repr(exc)[:200],
                    )
                    return
                finally:
                    self._writing = ()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.flush()

    def start(self) -> None:
        """Begin writing in the background."""
        self._task = asyncio.create_task(self._run(), name=f"{self._name}-flush")

    async def close(self) -> None:
        """Stop the task and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
