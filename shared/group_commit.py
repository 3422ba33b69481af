"""Group commit for SQLite: many callers' writes, one transaction and one thread.

Writes that arrive while a batch is being committed wait and go together into the next
one, so a burst costs one lock, one commit (one fsync) and one thread hand-off instead of
one of each per write. Each write runs in its own savepoint: one that fails is rolled
back alone and its caller gets the exception; the others commit. Writes are applied in
the order they were asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

__all__ = ["GroupCommit", "Write"]

T = TypeVar("T")
R = TypeVar("R")
Write = Callable[[sqlite3.Connection], T]


def _settle(future: asyncio.Future[Any], outcome: Any, *, failed: bool) -> None:
    if future.done():
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class _WriterThread:
    """One thread that owns one SQLite connection and runs calls on it, in order.

    A plain thread and queue rather than an executor: handing a batch over and getting
    its outcomes back costs one queue put and one wake-up of the event loop, about a
    third of the CPU `run_in_executor` spends. SQLite connections stay in the thread
    that opened them.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str) -> None:
        self._connect = connect
        # (call, loop, future); a call of None closes the connection and ends the thread.
        self._requests: queue.SimpleQueue[
            tuple[Callable[[sqlite3.Connection], Any] | None, asyncio.AbstractEventLoop, Any]
        ] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def call(self, fn: Callable[[sqlite3.Connection], R]) -> asyncio.Future[R]:
        """Run `fn(connection)` on the thread; its result (or exception) on this loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._requests.put((fn, loop, future))
        return future

    def stop(self) -> asyncio.Future[None]:
        """After the calls already asked for: close the connection and end the thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._requests.put((None, loop, future))
        return future

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        while True:
            fn, loop, future = self._requests.get()
            outcome: Any = None
            failed = False
            try:
                if fn is None:
                    if conn is not None:
                        conn.close()
                else:
                    if conn is None:
                        conn = self._connect()
                    outcome = fn(conn)
            except BaseException as exc:  # the caller's to handle, whatever it is
                outcome, failed = exc, True
            # A closed loop has nobody left waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(partial(_settle, future, outcome, failed=failed))
            if fn is None:
                return


class GroupCommit(Generic[T]):
    """Batches `Write`s onto one connection owned by one writer thread."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str) -> None:
        self._connect = connect
        self._name = name
        self._writer: _WriterThread | None = None
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
        while self._queued:
            batch, self._queued = self._queued, []
            if self._writer is None:
                self._writer = _WriterThread(self._connect, self._name)
            outcomes: Sequence[Any]
            try:
                outcomes = await self._writer.call(
                    partial(self._commit, [write for write, _ in batch])
                )
            except Exception as exc:  # the whole batch failed: tell every caller
                outcomes = [exc] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                _settle(future, outcome, failed=isinstance(outcome, Exception))

    @staticmethod
    def _commit(writes: Sequence[Write[T]], conn: sqlite3.Connection) -> list[T | Exception]:
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

    async def close(self) -> None:
        """Finish what is queued, then close the connection (a later write reopens it)."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.stop()
