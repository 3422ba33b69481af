"""The trigger store: one interface; SQLite by default (one file, nothing to run)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeVar

import msgspec

from shared.messages import Action, utcnow
from shared.triggers import (
    Trigger,
    TriggerOptions,
    hash_secret,
    new_secret,
    new_trigger_id,
    validate_name,
    validate_namespace,
)

__all__ = ["SqliteTriggerStore", "TriggerStore", "encode_options", "open_store"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triggers (
    id           TEXT PRIMARY KEY,
    cluster      TEXT NOT NULL,
    app          TEXT NOT NULL,
    action       TEXT NOT NULL CHECK (action IN ('redeploy', 'scale')),
    service      TEXT,
    image_update INTEGER NOT NULL DEFAULT 0,
    namespace    TEXT,
    secret_hash  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT,
    options      TEXT
);
CREATE INDEX IF NOT EXISTS triggers_by_app ON triggers (cluster, app);
"""
_options_decoder = msgspec.json.Decoder(TriggerOptions)
_options_encoder = msgspec.json.Encoder()

# Columns added after the first release, for files created before them.
_ADDED_COLUMNS = {
    "namespace": "ALTER TABLE triggers ADD COLUMN namespace TEXT",
    "options": "ALTER TABLE triggers ADD COLUMN options TEXT",
}


class TriggerStore(Protocol):
    """Where triggers live. The secret itself is never stored, only its hash."""

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
    ) -> tuple[Trigger, str]:
        """Create a trigger; return it with its secret, which is never shown again."""
        ...

    async def get(self, trigger_id: str) -> Trigger | None:
        """The trigger with this id, revoked or not, or None."""
        ...

    async def list(
        self, *, cluster: str | None = None, app: str | None = None, include_revoked: bool = False
    ) -> list[Trigger]:
        """Triggers, newest first."""
        ...

    async def revoke(self, trigger_id: str) -> Trigger | None:
        """Revoke a trigger (idempotent); None when it does not exist."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


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


def _row_to_trigger(row: sqlite3.Row) -> Trigger:
    return Trigger(
        id=row["id"],
        cluster=row["cluster"],
        app=row["app"],
        action=row["action"],
        service=row["service"],
        image_update=bool(row["image_update"]),
        namespace=row["namespace"],
        secret_hash=row["secret_hash"],
        created_at=datetime.fromisoformat(row["created_at"]),
        revoked_at=datetime.fromisoformat(row["revoked_at"]) if row["revoked_at"] else None,
        options=_options_decoder.decode(row["options"]) if row["options"] else TriggerOptions(),
    )


def encode_options(options: TriggerOptions) -> str | None:
    """The `options` column's value: JSON, or NULL when every option has its default."""
    if options == TriggerOptions():
        return None
    return _options_encoder.encode(options).decode()


class SqliteTriggerStore:
    """Triggers in one SQLite file, safe to share between processes on one machine.

    Each call opens a short-lived connection in a worker thread: SQLite is fast enough
    that this costs little, and the event loop never blocks on a file lock.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self._ready:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
            present = {r["name"] for r in conn.execute("PRAGMA table_info(triggers)")}
            for column, statement in _ADDED_COLUMNS.items():
                if column not in present:
                    conn.execute(statement)
            self._ready = True
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            conn = self._connect()
            try:
                return fn(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(call)

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
    ) -> tuple[Trigger, str]:
        """Create a trigger; return it with its secret, which is never shown again."""
        _check_new(
            cluster, app, action, service, namespace, image_update=image_update, options=options
        )
        secret = new_secret()
        trigger = Trigger(
            id=new_trigger_id(),
            cluster=cluster,
            app=app,
            action=action,
            service=service,
            image_update=image_update,
            namespace=namespace,
            secret_hash=hash_secret(secret),
            created_at=utcnow(),
            options=options or TriggerOptions(),
        )

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO triggers (id, cluster, app, action, service, image_update,"
                " namespace, secret_hash, created_at, options)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    trigger.id,
                    trigger.cluster,
                    trigger.app,
                    trigger.action,
                    trigger.service,
                    int(trigger.image_update),
                    trigger.namespace,
                    trigger.secret_hash,
                    trigger.created_at.isoformat(),
                    encode_options(trigger.options),
                ),
            )

        await self._run(insert)
        return trigger, secret

    async def get(self, trigger_id: str) -> Trigger | None:
        """The trigger with this id, revoked or not, or None."""

        def select(conn: sqlite3.Connection) -> Trigger | None:
            row = conn.execute("SELECT * FROM triggers WHERE id = ?", (trigger_id,)).fetchone()
            return _row_to_trigger(row) if row else None

        return await self._run(select)

    async def list(
        self, *, cluster: str | None = None, app: str | None = None, include_revoked: bool = False
    ) -> list[Trigger]:
        """Triggers, newest first."""
        clauses, params = [], []
        if cluster:
            clauses.append("cluster = ?")
            params.append(cluster)
        if app:
            clauses.append("app = ?")
            params.append(app)
        if not include_revoked:
            clauses.append("revoked_at IS NULL")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT * FROM triggers {where} ORDER BY created_at DESC, id"  # noqa: S608 - clauses are constants

        def select(conn: sqlite3.Connection) -> list[Trigger]:
            return [_row_to_trigger(r) for r in conn.execute(query, params).fetchall()]

        return await self._run(select)

    async def revoke(self, trigger_id: str) -> Trigger | None:
        """Revoke a trigger (idempotent); None when it does not exist."""

        def update(conn: sqlite3.Connection) -> Trigger | None:
            conn.execute(
                "UPDATE triggers SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (utcnow().isoformat(), trigger_id),
            )
            row = conn.execute("SELECT * FROM triggers WHERE id = ?", (trigger_id,)).fetchone()
            return _row_to_trigger(row) if row else None

        return await self._run(update)

    async def close(self) -> None:
        """Nothing stays open between calls."""


def open_store(database: str) -> TriggerStore:
    """The store named by a `TRIGGERS_DATABASE` URL."""
    if database.startswith("sqlite:///"):
        path = database.removeprefix("sqlite:///")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return SqliteTriggerStore(path)
    msg = (
        "only sqlite:///path databases are supported in this version; "
        "set TRIGGERS_DATABASE=sqlite:///triggers.db"
    )
    raise ValueError(msg)
