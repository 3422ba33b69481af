"""The trigger store: one interface, two backends.

SQLite is the default (one file, nothing to run, shared by every process on a machine);
PostgreSQL (``TRIGGERS_DATABASE=postgresql://...``, through asyncpg) when several machines
share triggers. Both run the same SQL through a small driver: statements are written
with ``?`` placeholders, and the PostgreSQL driver numbers them. The schema is migrated
at start (`shared/migrations.py`).
"""

from __future__ import annotations

import asyncio
import builtins
import re
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec

from shared.audit import AuditEntry, Outcome
from shared.errors import PermanentError
from shared.messages import Action, utcnow
from shared.migrations import MIGRATION_LOCK, MIGRATIONS, Dialect, render
from shared.policy import POLICY_FIELDS, PolicyChanges, merge_policy
from shared.triggers import (
    Trigger,
    TriggerOptions,
    TriggerState,
    hash_secret,
    new_secret,
    new_trigger_id,
    validate_name,
    validate_namespace,
)

__all__ = [
    "PostgresTriggerStore",
    "SqliteTriggerStore",
    "TriggerRevokedError",
    "TriggerStore",
    "encode_options",
    "open_store",
]

T = TypeVar("T")
Row = dict[str, Any]


class TriggerRevokedError(PermanentError):
    """The trigger is revoked: it cannot be rotated or changed any more."""


class TriggerStore(Protocol):
    """Where triggers and the audit trail live. Secrets are never stored, only hashes."""

    async def start(self) -> None:
        """Connect and migrate the schema; safe to call from several processes at once."""
        ...

    async def create(
        self,
        *,
        cluster: str,
        app: str,
        action: Action,
        service: str | None = None,
        image_update: bool = False,
        namespace: str | None = None,
        options: TriggerOptions | None = None,
        policy: PolicyChanges | None = None,
    ) -> tuple[Trigger, str]:
        """Create a trigger; return it with its secret, which is never shown again."""
        ...

    async def get(self, trigger_id: str) -> Trigger | None:
        """The trigger with this id, revoked or not, or None."""
        ...

    async def list(
        self,
        *,
        cluster: str | None = None,
        app: str | None = None,
        action: Action | None = None,
        state: TriggerState | None = None,
        include_revoked: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Trigger]:
        """Triggers, newest first; `state` filters on what a call would find now."""
        ...

    async def update(self, trigger_id: str, changes: PolicyChanges) -> Trigger | None:
        """Change a trigger's policy; None when it does not exist.

        Raises `PolicyError` for a policy that cannot hold and `TriggerRevokedError`.
        """
        ...

    async def rotate(self, trigger_id: str, *, grace: float) -> tuple[Trigger, str] | None:
        """A new secret now; the old one keeps working for `grace` seconds. None if unknown."""
        ...

    async def revoke(self, trigger_id: str) -> Trigger | None:
        """Revoke a trigger (idempotent); None when it does not exist."""
        ...

    async def record_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append entries to the audit trail in one write."""
        ...

    async def list_audit(
        self,
        *,
        trigger_id: str | None = None,
        outcome: Outcome | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> builtins.list[AuditEntry]:
        """Audit entries, newest first; `before_id` pages back."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class _Driver(Protocol):
    dialect: Dialect

    async def migrate(self) -> None: ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def close(self) -> None: ...


def _check_new(
    cluster: str,
    app: str,
    action: Action,
    service: str | None,
    namespace: str | None = None,
    *,
    image_update: bool = False,
    options: TriggerOptions | None = None,
) -> None:
    if options is not None:
        options.check(action, image_update)
    if namespace is not None:
        validate_namespace(namespace)
    validate_name("cluster", cluster)
    validate_name("app", app)
    if action == "scale":
        if not service:
            msg = "a scale trigger needs --service: scaling acts on one service"
            raise ValueError(msg)
        validate_name("service", service)
    elif service is not None:
        validate_name("service", service)


def encode_options(options: TriggerOptions) -> str | None:
    """The `options` column's value: JSON, or NULL when every option has its default."""
    if options == TriggerOptions():
        return None
    return msgspec.json.encode(options).decode()


def _trigger(row: Row) -> Trigger:
    data = dict(row)
    data["allowed_methods"] = tuple(filter(None, (data.get("allowed_methods") or "").split(",")))
    data["options"] = msgspec.json.decode(data["options"]) if data.get("options") else {}
    # Lax conversion reads SQLite's 0/1 and ISO text as the struct's bools and datetimes.
    return msgspec.convert(data, Trigger, strict=False)


def _columns(trigger: Trigger, names: Sequence[str]) -> list[Any]:
    values = []
    for name in names:
        value = getattr(trigger, name)
        if name == "allowed_methods":
            value = ",".join(value)
        elif name == "options":
            value = encode_options(value)
        values.append(value)
    return values


# Every column of a trigger, from the struct: a field added with its migration is stored
# without touching the SQL below.
_TRIGGER_COLUMNS = tuple(f.name for f in msgspec.structs.fields(Trigger))
_AUDIT_COLUMNS = tuple(f.name for f in msgspec.structs.fields(AuditEntry) if f.name != "id")


class SqlTriggerStore:
    """The `TriggerStore` over a driver; the SQL is shared by both databases."""

    def __init__(self, driver: _Driver) -> None:
        self._db = driver
        self._started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect and migrate (once per store)."""
        async with self._start_lock:
            if not self._started:
                await self._db.migrate()
                self._started = True

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if not self._started:
            await self.start()
        return await self._db.fetch(sql, params)

    async def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if not self._started:
            await self.start()
        return await self._db.execute(sql, params)

    async def create(
        self,
        *,
        cluster: str,
        app: str,
        action: Action,
        service: str | None = None,
        image_update: bool = False,
        namespace: str | None = None,
        options: TriggerOptions | None = None,
        policy: PolicyChanges | None = None,
    ) -> tuple[Trigger, str]:
        """Create a trigger; return it with its secret, which is never shown again."""
        _check_new(
            cluster, app, action, service, namespace, image_update=image_update, options=options
        )
        now = utcnow()
        merged = merge_policy(action, policy or PolicyChanges(), now)
        secret = new_secret()
        trigger = Trigger(
            id=new_trigger_id(),
            cluster=cluster,
            app=app,
            action=action,
            service=service,
            image_update=image_update,
            namespace=namespace,
            options=options or TriggerOptions(),
            secret_hash=hash_secret(secret),
            created_at=now,
            **merged,
        )
        marks = ", ".join("?" for _ in _TRIGGER_COLUMNS)
        await self._execute(
            f"INSERT INTO triggers ({', '.join(_TRIGGER_COLUMNS)}) VALUES ({marks})",  # noqa: S608 - column names come from the struct
            _columns(trigger, _TRIGGER_COLUMNS),
        )
        return trigger, secret

    async def get(self, trigger_id: str) -> Trigger | None:
        """The trigger with this id, revoked or not, or None."""
        rows = await self._fetch("SELECT * FROM triggers WHERE id = ?", (trigger_id,))
        return _trigger(rows[0]) if rows else None

    async def list(
        self,
        *,
        cluster: str | None = None,
        app: str | None = None,
        action: Action | None = None,
        state: TriggerState | None = None,
        include_revoked: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Trigger]:
        """Triggers, newest first; `state` filters on what a call would find now."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("cluster", cluster), ("app", app), ("action", action)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        now = utcnow()
        live = "revoked_at IS NULL AND enabled = ?"
        if state == "revoked":
            clauses.append("revoked_at IS NOT NULL")
        elif state == "disabled":
            clauses.append("revoked_at IS NULL AND enabled = ?")
            params.append(False)
        elif state == "expired":
            clauses.append(f"{live} AND expires_at IS NOT NULL AND expires_at <= ?")
            params.extend([True, now])
        elif state == "active":
            clauses.append(f"{live} AND (expires_at IS NULL OR expires_at > ?)")
            params.extend([True, now])
        elif not include_revoked:
            clauses.append("revoked_at IS NULL")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        page = ""
        if limit is not None:
            page = " LIMIT ? OFFSET ?"
            params.extend([limit, offset])
        rows = await self._fetch(
            f"SELECT * FROM triggers {where} ORDER BY created_at DESC, id{page}",  # noqa: S608 - clauses are constants
            params,
        )
        return [_trigger(r) for r in rows]

    async def _write(self, trigger: Trigger, names: Sequence[str]) -> None:
        sets = ", ".join(f"{name} = ?" for name in names)
        await self._execute(
            f"UPDATE triggers SET {sets} WHERE id = ?",  # noqa: S608 - column names come from the struct
            [*_columns(trigger, names), trigger.id],
        )

    async def update(self, trigger_id: str, changes: PolicyChanges) -> Trigger | None:
        """Change a trigger's policy as a whole; None when it does not exist."""
        current = await self.get(trigger_id)
        if current is None:
            return None
        if current.revoked:
            msg = f"trigger {trigger_id} is revoked; create a new one"
            raise TriggerRevokedError(msg)
        now = utcnow()
        merged = merge_policy(current.action, changes, now, current)
        # The whole policy is written at once, so two concurrent updates never leave a
        # mix (say min from one and max from the other) that neither checked.
        updated = msgspec.structs.replace(current, **merged, updated_at=now)
        await self._write(updated, [*POLICY_FIELDS, "updated_at"])
        return updated

    async def rotate(self, trigger_id: str, *, grace: float) -> tuple[Trigger, str] | None:
        """A new secret now; the old one keeps working for `grace` seconds."""
        secret = new_secret()
        now = utcnow()
        # One statement: the right-hand sides read the row as it was, so the previous
        # hash is the one being replaced even when two rotations race.
        count = await self._execute(
            "UPDATE triggers SET previous_secret_hash = secret_hash,"
            " previous_secret_expires_at = ?, secret_hash = ?, rotated_at = ?, updated_at = ?"
            " WHERE id = ? AND revoked_at IS NULL",
            (now + timedelta(seconds=grace), hash_secret(secret), now, now, trigger_id),
        )
        trigger = await self.get(trigger_id)
        if trigger is None:
            return None
        if count == 0:
            msg = f"trigger {trigger_id} is revoked; create a new one"
            raise TriggerRevokedError(msg)
        return trigger, secret

    async def revoke(self, trigger_id: str) -> Trigger | None:
        """Revoke a trigger (idempotent); None when it does not exist."""
        now = utcnow()
        await self._execute(
            "UPDATE triggers SET revoked_at = ?, updated_at = ? WHERE id = ? AND revoked_at IS NULL",
            (now, now, trigger_id),
        )
        return await self.get(trigger_id)

    async def record_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append entries to the audit trail in one write."""
        if not entries:
            return
        if not self._started:
            await self.start()
        marks = ", ".join("?" for _ in _AUDIT_COLUMNS)
        await self._db.execute_many(
            f"INSERT INTO audit ({', '.join(_AUDIT_COLUMNS)}) VALUES ({marks})",  # noqa: S608 - column names come from the struct
            [[getattr(e, name) for name in _AUDIT_COLUMNS] for e in entries],
        )

    async def list_audit(
        self,
        *,
        trigger_id: str | None = None,
        outcome: Outcome | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> builtins.list[AuditEntry]:
        """Audit entries, newest first; `before_id` pages back."""
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("trigger_id = ?", trigger_id),
            ("outcome = ?", outcome),
            ("id < ?", before_id),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetch(
            f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?",  # noqa: S608 - clauses are constants
            [*params, limit],
        )
        return [msgspec.convert(r, AuditEntry, strict=False) for r in rows]

    async def close(self) -> None:
        """Release connections."""
        await self._db.close()


# --- SQLite -------------------------------------------------------------------------


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        # A fixed width, so text order is time order.
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
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


class _SqliteDriver:
    """A short-lived connection per call in a worker thread: the loop never waits on a lock."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self._path = path

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
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
        def apply(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA journal_mode = WAL")
            # The write lock first: a second process waits here, then finds nothing to do.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version"
                    " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                (done,) = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_version"
                ).fetchone()
                for migration in MIGRATIONS:
                    if migration.version <= done:
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
        values = [_sqlite_value(p) for p in params]
        return await self._run(lambda c: [dict(r) for r in c.execute(sql, values).fetchall()])

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        values = [_sqlite_value(p) for p in params]
        return await self._run(lambda c: c.execute(sql, values).rowcount)

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        values = [[_sqlite_value(p) for p in row] for row in rows]

        def insert(conn: sqlite3.Connection) -> None:
            with conn:  # one transaction for the batch
                conn.executemany(sql, values)

        await self._run(insert)

    async def close(self) -> None:
        """Nothing stays open between calls."""


class SqliteTriggerStore(SqlTriggerStore):
    """Triggers in one SQLite file, safe to share between processes on one machine."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(_SqliteDriver(str(path)))


# --- PostgreSQL ---------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class _PostgresDriver:
    """An asyncpg pool, opened at start."""

    dialect: Dialect = "postgresql"

    def __init__(self, dsn: str, *, max_size: int = 10) -> None:
        self._dsn = dsn
        self._max_size = max_size
        self._pool: Any = None

    async def _open(self) -> Any:
        import asyncpg  # noqa: PLC0415 - only PostgreSQL deployments need the driver

        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._max_size, command_timeout=30
            )
        return self._pool

    async def migrate(self) -> None:
        pool = await self._open()
        async with pool.acquire() as conn, conn.transaction():
            # Held until the transaction ends: other processes wait, then find it done.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
            )
            done = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            for migration in MIGRATIONS:
                if migration.version <= done:
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
        pool = await self._open()
        return [dict(r) for r in await pool.fetch(_numbered(sql), *params)]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        pool = await self._open()
        status: str = await pool.execute(_numbered(sql), *params)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        pool = await self._open()
        await pool.executemany(_numbered(sql), rows)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class PostgresTriggerStore(SqlTriggerStore):
    """Triggers in PostgreSQL, shared by any number of gateways and CLIs."""

    def __init__(self, dsn: str, *, max_size: int = 10) -> None:
        super().__init__(_PostgresDriver(dsn, max_size=max_size))


def open_store(database: str) -> TriggerStore:
    """The store named by a `TRIGGERS_DATABASE` URL (not connected until first use)."""
    if database.startswith("sqlite:///"):
        path = database.removeprefix("sqlite:///")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return SqliteTriggerStore(path)
    if database.startswith(("postgresql://", "postgres://")):
        return PostgresTriggerStore(database)
    msg = (
        "TRIGGERS_DATABASE must be sqlite:///path/to/file.db or postgresql://user@host/db, "
        f"got {database.split('://', maxsplit=1)[0]}://..."
    )
    raise ValueError(msg)
