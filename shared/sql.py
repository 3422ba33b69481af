"""SQL plumbing shared by the trigger store and job history: one driver per database.

The stores (`shared/store.py`, `shared/jobs.py`) write their SQL once, with ``?``
placeholders and no database-only functions. SQLite (``sqlite:///path``, the default: one
file, nothing to run) runs it as it is, on a short-lived connection in a worker thread;
PostgreSQL (``postgresql://...``, through an asyncpg pool) when several machines share
the data, with the placeholders numbered. Datetimes are stored as fixed-width UTC text in
SQLite (text order is time order) and as ``TIMESTAMPTZ`` in PostgreSQL. Both apply the
one list of `shared/migrations.py` when a store starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

from shared.errors import StoreUnavailable
from shared.group_commit import GroupCommit
from shared.messages import utcnow
from shared.migrations import MIGRATION_LOCK, MIGRATIONS, Dialect, render

__all__ = [
    "LISTENER_NAME",
    "Listener",
    "PostgresDriver",
    "Row",
    "SqlBackend",
    "SqlDriver",
    "SqliteDriver",
    "parse_database",
    "sqlite_transaction",
]

T = TypeVar("T")
Row = dict[str, Any]
Synchronous = Literal["FULL", "NORMAL"]


class SqlDriver(Protocol):
    """Runs `?`-placeholder SQL on one database."""

    dialect: Dialect
    # Where the data lives, for an operator's error message (no password).
    where: str

    async def migrate(self) -> None:
        """Apply the migrations not applied yet; safe from several processes at once."""
        ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of a query, as dicts."""
        ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per row, in one transaction."""
        ...

    async def execute_in_one(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        """Run statements in one transaction; the number of rows the first one changed."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def parse_database(database: str) -> tuple[Dialect, str]:
    """The dialect and the path (SQLite, its folder created) or DSN of a `TRIGGERS_DATABASE` URL."""
    if database.startswith("sqlite:///"):
        path = database.removeprefix("sqlite:///")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = (
                f"cannot create the folder of the SQLite store {path}: {exc.strerror}; "
                "set TRIGGERS_DATABASE (or --database) to a file in a writable folder"
            )
            raise StoreUnavailable(msg) from None
        return "sqlite", path
    if database.startswith(("postgresql://", "postgres://")):
        return "postgresql", database
    msg = (
        "TRIGGERS_DATABASE must be sqlite:///path/to/file.db or postgresql://user@host/db, "
        f"got {database.split('://', maxsplit=1)[0]}://..."
    )
    raise ValueError(msg)


_SQLITE_OUTAGE = (sqlite3.OperationalError, OSError, TimeoutError)
_outage_with_postgres: tuple[type[BaseException], ...] | None = None


def _outage_errors() -> tuple[type[BaseException], ...]:
    """What "the database is not there" looks like from either driver (not a syntax error:
    see `_unavailable`); asyncpg's once a PostgreSQL store loaded it (SQLite never does)."""
    global _outage_with_postgres  # noqa: PLW0603 - computed once, after asyncpg is loaded
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is None:
        return _SQLITE_OUTAGE
    if _outage_with_postgres is None:
        exceptions = asyncpg.exceptions
        _outage_with_postgres = (
            *_SQLITE_OUTAGE,
            *(asyncpg.PostgresConnectionError, asyncpg.InterfaceError),
            *(exceptions.CannotConnectNowError, exceptions.AdminShutdownError),
            # A backend killed mid-query (pg_terminate_backend, a failover), from the
            # pool's release: "cannot switch to state ...; another operation is in progress".
            exceptions.InternalClientError,
        )
    return _outage_with_postgres


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """`StoreUnavailable` (503, not 500) for an outage; sqlite3 says "no such table" and
    "syntax error" through OperationalError too, and those are bugs, not outages."""
    try:
        yield
    except _outage_errors() as exc:
        if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(
            ("no such", "syntax error")
        ):
            raise
        msg = f"the database did not answer: {type(exc).__name__}"
        raise StoreUnavailable(msg) from exc


class SqlBackend:
    """A store over a driver: migrated once on first use (or `start`), then plain SQL."""

    def __init__(self, driver: SqlDriver) -> None:
        self._db = driver
        self._started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect and migrate (once per store; again after a failed attempt).

        Raises `StoreUnavailable`, one line with what to fix, when the store cannot be
        opened, reached, logged into or migrated: the first contact is where an operator's
        mistake (a wrong URL, a stopped server, a read-only folder) shows.
        """
        async with self._start_lock:
            if not self._started:
                try:
                    await self._db.migrate()
                except StoreUnavailable:
                    raise
                except Exception as exc:
                    raise store_unavailable(self._db, exc) from exc
                self._started = True

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with _unavailable():
            if not self._started:
                await self.start()
            return await self._db.fetch(sql, params)

    async def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with _unavailable():
            if not self._started:
                await self.start()
            return await self._db.execute(sql, params)

    async def _execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with _unavailable():
            if not self._started:
                await self.start()
            await self._db.execute_many(sql, rows)

    async def _execute_in_one(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        with _unavailable():
            if not self._started:
                await self.start()
            return await self._db.execute_in_one(statements)

    async def close(self) -> None:
        """Release connections."""
        await self._db.close()


def _postgres_where(dsn: str) -> str:
    """``host:port/db`` of a PostgreSQL URL, without user or password."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 5432}{parts.path or '/'}"


def store_unavailable(driver: SqlDriver, exc: BaseException) -> StoreUnavailable:
    """One line saying what went wrong with the store and which setting to look at."""
    fix = "check TRIGGERS_DATABASE (or --database)"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if driver.dialect == "sqlite":
        if isinstance(exc, sqlite3.OperationalError | OSError):
            fix = "set TRIGGERS_DATABASE (or --database) to a file in a writable folder"
        msg = f"cannot open the SQLite store {driver.where}: {reason}; {fix}"
        return StoreUnavailable(msg)
    name = type(exc).__name__
    if isinstance(exc, OSError | TimeoutError):
        what = f"cannot reach PostgreSQL at {driver.where}"
        reason = getattr(exc, "strerror", None) or reason
        fix = "is it running? " + fix
    elif name in ("InvalidAuthorizationSpecificationError", "InvalidPasswordError"):
        what = f"PostgreSQL at {driver.where} refused the login"
        fix = "fix the user or password in TRIGGERS_DATABASE"
    elif name == "InvalidCatalogNameError":
        what = f"PostgreSQL at {driver.where} has no such database"
        fix = "create it, or fix the database name in TRIGGERS_DATABASE"
    elif name == "InsufficientPrivilegeError":
        what = f"the PostgreSQL role cannot create the tables in {driver.where}"
        fix = "grant it CREATE on the schema, or use another role in TRIGGERS_DATABASE"
    else:
        what = f"cannot use the PostgreSQL store at {driver.where}"
    return StoreUnavailable(f"{what}: {reason}; {fix}")


# --- SQLite -------------------------------------------------------------------------


_UTC_OFFSET = timedelta(0)


def _sqlite_value(value: Any) -> Any:
    if value is None or type(value) is str:  # most columns: as they are, at once
        return value
    if isinstance(value, datetime):
        # A fixed width in UTC, so text order is time order ("...T12:00:00.000000+00:00");
        # `isoformat` is twice as fast as the equivalent `strftime`.
        if value.utcoffset() != _UTC_OFFSET:
            value = value.astimezone(UTC)
        return value.isoformat(timespec="microseconds")
    if isinstance(value, bool):
        return int(value)
    return value


_ADD_COLUMN = re.compile(r"^\s*ALTER TABLE (\w+) ADD COLUMN (\w+)", re.IGNORECASE)


def _column_exists(conn: sqlite3.Connection, statement: str) -> bool:
    """Whether an ``ADD COLUMN`` statement's column is there already.

    SQLite files written before versioned migrations may have a column (``namespace``)
    that a migration adds; SQLite has no ``ADD COLUMN IF NOT EXISTS``.
    """
    match = _ADD_COLUMN.match(statement)
    if match is None:
        return False
    table, column = match.groups()
    return any(row["name"] == column for row in conn.execute(f"PRAGMA table_info({table})"))


def _use_wal(conn: sqlite3.Connection, within: float = 30.0) -> None:
    """Switch the file to WAL (it stays so), waiting out other connections.

    Changing the journal mode needs the file to itself and SQLite answers "database is
    locked" at once rather than through the busy timeout, so processes and stores starting
    together on a fresh file retry here, bounded.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # in a worker thread: the event loop goes on
        else:
            return


_VALUES = re.compile(r"\bVALUES\s*(\((?:[^()']|'[^']*')*\))", re.IGNORECASE)
# SQLite (3.32+) binds up to 32,766 parameters per statement; stay well below.
_MAX_PARAMETERS = 30_000


def _multi_row(sql: str, rows: list[list[Any]]) -> list[tuple[str, list[Any]]]:
    """``INSERT ... VALUES (row)`` as statements of many rows each, with their parameters.

    Each holds a power of two of rows (37: 32, 4 and 1): a dozen texts per table at most,
    which SQLite's statement cache keeps. A text per batch size filled that cache (128 per
    connection) with large statements used once: 10 MB of the gateway after 20,000 calls.
    """
    if not rows:
        return []
    found = _VALUES.search(sql)
    if found is None:
        msg = f"execute_many needs one VALUES (...) group to repeat: {sql[:60]!r}"
        raise ValueError(msg)
    group = found.group(1)
    largest = 1 << (max(1, _MAX_PARAMETERS // max(1, len(rows[0]))).bit_length() - 1)
    statements = []
    start = 0
    while start < len(rows):
        size = min(largest, 1 << ((len(rows) - start).bit_length() - 1))
        chunk = rows[start : start + size]
        start += size
        groups = ", ".join([group] * size)
        query = f"{sql[: found.start(1)]}{groups}{sql[found.end(1) :]}"
        statements.append((query, [value for row in chunk for value in row]))
    return statements


def sqlite_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """`fn` in one transaction on an autocommitting connection, the write lock taken first."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class SqliteDriver:
    """A short-lived connection per call in a worker thread: the loop never waits on a lock.

    `synchronous="NORMAL"` skips an fsync per write; in WAL mode that still survives a
    process crash (only a power loss can drop the last writes), which suits data that is
    not the source of truth, such as job history. With `group_commit` (the writer thread's
    name), `execute` goes through `shared/group_commit.py`: concurrent writes share one
    transaction on one long-lived connection instead of a connection and a commit each.
    """

    dialect: Dialect = "sqlite"

    def __init__(
        self, path: str, *, synchronous: Synchronous = "FULL", group_commit: str | None = None
    ) -> None:
        self._path = path
        self.where = path
        self._synchronous = synchronous
        self._writes: GroupCommit[int] | None = (
            GroupCommit(self._connect, group_commit) if group_commit else None
        )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            conn = self._connect()
            try:
                return fn(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(call)

    async def migrate(self) -> None:
        """Apply pending migrations under SQLite's write lock.

        Pending means not recorded, not above the highest recorded: versions are handed
        out in blocks and may land out of order, so 7 can arrive after 23 was applied.
        """

        def apply(conn: sqlite3.Connection) -> None:
            _use_wal(conn)
            # The write lock first: a second process waits here, then finds nothing to do.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version"
                    " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                done = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
                for migration in MIGRATIONS:
                    if migration.version in done:
                        continue
                    for statement in render(migration, "sqlite"):
                        if not _column_exists(conn, statement):
                            conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                        (migration.version, migration.name, _sqlite_value(utcnow())),
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        await self._run(apply)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of a query, as dicts."""
        values = [_sqlite_value(p) for p in params]
        return await self._run(lambda c: [dict(r) for r in c.execute(sql, values).fetchall()])

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        values = [_sqlite_value(p) for p in params]
        if self._writes is not None:
            return await self._writes.run(lambda c: c.execute(sql, values).rowcount)
        return await self._run(lambda c: c.execute(sql, values).rowcount)

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run an ``INSERT ... VALUES (...)`` for many rows, in one transaction.

        As multi-row ``VALUES`` statements, not `executemany`: that steps once per row,
        and the writer thread gives up and takes back the GIL at each step; with the
        event loop busy under load each take waits for the loop's switch interval, and a
        batch of a few hundred rows took seconds. One statement per chunk steps once.
        """
        statements = _multi_row(sql, [[_sqlite_value(p) for p in row] for row in rows])
        if self._writes is not None:
            await self._writes.run(lambda c: sum(c.execute(q, v).rowcount for q, v in statements))
            return

        def insert(conn: sqlite3.Connection) -> None:
            for query, values in statements:
                conn.execute(query, values)

        # The connection autocommits (isolation_level=None): without an explicit
        # transaction every statement would be a commit of its own.
        await self._run(lambda conn: sqlite_transaction(conn, insert))

    async def execute_in_one(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        """Run statements in one transaction; the number of rows the first one changed."""
        prepared = [(sql, [_sqlite_value(p) for p in params]) for sql, params in statements]

        def every(conn: sqlite3.Connection) -> int:
            counts = [conn.execute(q, v).rowcount for q, v in prepared]
            return counts[0]

        if self._writes is not None:  # one write of a batch: its transaction is the batch's
            return await self._writes.run(every)

        return await self._run(lambda conn: sqlite_transaction(conn, every))

    async def close(self) -> None:
        """Commit queued writes and close the writer's connection, if there is one."""
        if self._writes is not None:
            await self._writes.close()


# --- PostgreSQL ---------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


# The listening connections' application_name, so an operator sees them in pg_stat_activity.
LISTENER_NAME = "triggers-changes"


class Listener:
    """One `LISTEN`ing connection: `lost` is set when it closes or stops answering."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: self.lost.set())

    async def watch(self, every: float) -> None:
        """Return once the connection is lost; a probe every `every` seconds notices a
        connection that went silent without closing (a dead peer, a cut network)."""
        while not self.lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lost.wait(), every)
                return
            try:
                await self._conn.fetchval("SELECT 1", timeout=min(every, 5.0))
            except Exception:  # whatever the failure, the push is gone until reconnected
                self.lost.set()

    async def close(self) -> None:
        """Close the connection, abruptly when it does not answer."""
        try:
            await asyncio.wait_for(self._conn.close(), 2)
        except Exception:  # already broken: nothing to say goodbye to
            self._conn.terminate()


def _changed_rows(status: str) -> int:
    """The row count of a command tag (``UPDATE 3``, ``INSERT 0 1``)."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PostgresDriver:
    """An asyncpg pool, opened on first use."""

    dialect: Dialect = "postgresql"

    def __init__(self, dsn: str, *, max_size: int = 10) -> None:
        self._dsn = dsn
        self.where = _postgres_where(dsn)
        self._max_size = max_size
        self._pool: Any = None
        self._open_lock = asyncio.Lock()

    async def _open(self) -> Any:
        if self._pool is not None:
            return self._pool
        import asyncpg  # noqa: PLC0415 - only PostgreSQL deployments need the driver

        # Locked: concurrent first calls (a burst of trigger calls) open one pool, not several.
        async with self._open_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=1, max_size=self._max_size, command_timeout=30
                )
        return self._pool

    async def migrate(self) -> None:
        """Apply pending migrations under a transaction-scoped advisory lock."""
        pool = await self._open()
        async with pool.acquire() as conn, conn.transaction():
            # Held until the transaction ends: other processes wait, then find it done.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
            )
            done = {row[0] for row in await conn.fetch("SELECT version FROM schema_version")}
            for migration in MIGRATIONS:
                if migration.version in done:
                    continue
                for statement in render(migration, "postgresql"):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    utcnow(),
                )

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of a query, as dicts."""
        pool = await self._open()
        return [dict(r) for r in await pool.fetch(_numbered(sql), *params)]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed (from the command tag)."""
        pool = await self._open()
        return _changed_rows(await pool.execute(_numbered(sql), *params))

    async def execute_in_one(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        """Run statements in one transaction; the number of rows the first one changed."""
        pool = await self._open()
        async with pool.acquire() as conn, conn.transaction():
            counts = [
                _changed_rows(await conn.execute(_numbered(sql), *params))
                for sql, params in statements
            ]
        return counts[0]

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per row, in one transaction."""
        pool = await self._open()
        await pool.executemany(_numbered(sql), rows)

    async def listen(self, channel: str, on_payload: Callable[[str], None]) -> Listener:
        """A connection of its own, outside the pool, that `LISTEN`s on `channel`."""
        import asyncpg  # noqa: PLC0415 - only PostgreSQL deployments need the driver

        conn = await asyncpg.connect(
            self._dsn,
            timeout=5,
            command_timeout=5,
            server_settings={"application_name": LISTENER_NAME},
        )
        listener = Listener(conn)
        try:
            await conn.add_listener(channel, lambda _c, _pid, _ch, payload: on_payload(payload))
        except BaseException:
            await listener.close()
            raise
        return listener

    async def close(self) -> None:
        """Close the pool (it reopens on next use)."""
        async with self._open_lock:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None
