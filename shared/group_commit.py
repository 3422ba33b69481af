"""Group commit for SQLite: many callers' writes, one transaction and one thread.

Writes that arrive while a batch is being committed wait and go together into the next
one, so a burst costs one lock, one commit (one fsync) and one thread hand-off instead of
one of each per write. Each write runs in its own savepoint: one that fails is rolled
back alone and its caller gets the exception; the others commit. Writes are applied in
the order they were asked for.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

__all__ = ["GroupCommit", "Write"]

T = TypeVar("T")
Write = Callable[[sqlite3.Connection], T]


class GroupCommit(Generic[T]):
    """Batches `Write`s onto one connection owned by one writer thread."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str) -> None:
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        # One thread owns the connection: SQLite connections stay in their thread.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queued: list[tuple[Write[T], asyncio.Future[T]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def run(self, write: Write[T]) -> T:
        """Apply one write in the next batch; its result, or its exception."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((write, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # Shielded: a cancelled caller must not cancel a batch other writes wait on.
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queued:
            batch, self._queued = self._queued, []
            outcomes: Sequence[Any]
            try:
                outcomes = await loop.run_in_executor(
                    self._writer, self._commit, [write for write, _ in batch]
                )
            except Exception as exc:  # the whole batch failed: tell every caller
                outcomes = [exc] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _commit(self, writes: Sequence[Write[T]]) -> list[T | Exception]:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        outcomes: list[T | Exception] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for write in writes:
                conn.execute("SAVEPOINT write")
                try:
                    outcomes.append(write(conn))
                except Exception as exc:  # reported to that write's caller alone
                    conn.execute("ROLLBACK TO write")
                    outcomes.append(exc)
                conn.execute("RELEASE write")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        """Finish what is queued, then close the connection (a later write reopens it)."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])
        await asyncio.get_running_loop().run_in_executor(self._writer, self._close_connection)
