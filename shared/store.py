"""The trigger store: one interface, two backends.

SQLite is the default (one file, nothing to run, shared by every process on a machine);
PostgreSQL (``TRIGGERS_DATABASE=postgresql://...``, through asyncpg) when several machines
share triggers. Both run the same SQL through a driver of `shared/sql.py` (statements
with ``?`` placeholders); the schema is migrated at start (`shared/migrations.py`).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import msgspec

from shared.audit import AuditEntry, Outcome
from shared.errors import PermanentError
from shared.messages import Action, utcnow
from shared.policy import POLICY_FIELDS, PolicyChanges, PolicyError, merge_options, merge_policy
from shared.sql import (
    Listener,
    PostgresDriver,
    Row,
    SqlBackend,
    SqliteDriver,
    parse_database,
)
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
    "CHANGES_CHANNEL",
    "PostgresTriggerStore",
    "SqliteTriggerStore",
    "TriggerRevokedError",
    "TriggerStore",
    "encode_options",
    "open_store",
]


# The PostgreSQL channel every change to a trigger is notified on; the payload is its id.
CHANGES_CHANNEL = "triggers_changes"


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

    async def prune_audit(self, before: datetime) -> int:
        """Delete audit entries older than `before` (and trigger changes); how many entries."""
        ...

    async def changes_since(self, after: int | None) -> tuple[int, builtins.list[str]]:
        """The latest change number and the triggers changed after `after` (None: just the number)."""
        ...

    async def listen_changes(self, on_change: Callable[[str], None]) -> Listener | None:
        """Call `on_change(trigger_id)` as changes commit; None when the store cannot push."""
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


def encode_options(options: TriggerOptions) -> str | None:
    """The `options` column's value: JSON, or NULL when every option has its default."""
    if options == TriggerOptions():
        return None
    return msgspec.json.encode(options).decode()


def _trigger(row: Row) -> Trigger:
    data = dict(row)
    data["allowed_methods"] = tuple(filter(None, (data.get("allowed_methods") or "").split(",")))
    data["notify"] = tuple(filter(None, (data.get("notify") or "").split(",")))
    data["options"] = msgspec.json.decode(data["options"]) if data.get("options") else {}
    # Lax conversion reads SQLite's 0/1 and ISO text as the struct's bools and datetimes.
    return msgspec.convert(data, Trigger, strict=False)


def _columns(trigger: Trigger, names: Sequence[str]) -> list[Any]:
    values = []
    for name in names:
        value = getattr(trigger, name)
        if name == "allowed_methods":
            value = ",".join(value)
        elif name == "notify":
            value = ",".join(value) or None
        elif name == "options":
            value = encode_options(value)
        values.append(value)
    return values


# Every column of a trigger, from the struct: a field added with its migration is stored
# without touching the SQL below.
_TRIGGER_COLUMNS = tuple(f.name for f in msgspec.structs.fields(Trigger))
_AUDIT_COLUMNS = tuple(f.name for f in msgspec.structs.fields(AuditEntry) if f.name != "id")


class SqlTriggerStore(SqlBackend):
    """The `TriggerStore` over a driver; the SQL is shared by both databases."""

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
        await self._check_sinks(merged["notify"])
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
        await self._change(
            trigger.id,
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

    async def _check_sinks(self, names: Sequence[str]) -> None:
        """Refuse a `notify` list naming a sink that does not exist (same database)."""
        if not names:
            return
        marks = ", ".join("?" for _ in names)
        rows = await self._fetch(f"SELECT name FROM sinks WHERE name IN ({marks})", list(names))  # noqa: S608 - placeholders only
        missing = sorted(set(names) - {row["name"] for row in rows})
        if missing:
            msg = f"no sink named {', '.join(missing)}; create it with `triggers sink create` first"
            raise PolicyError(msg)

    async def _write(self, trigger: Trigger, names: Sequence[str]) -> None:
        sets = ", ".join(f"{name} = ?" for name in names)
        await self._change(
            trigger.id,
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
        options = merge_options(current.action, current.image_update, changes, current.options)
        await self._check_sinks(merged["notify"])
        # The whole policy is written at once, so two concurrent updates never leave a
        # mix (say min from one and max from the other) that neither checked.
        updated = msgspec.structs.replace(current, **merged, options=options, updated_at=now)
        await self._write(updated, [*POLICY_FIELDS, "options", "updated_at"])
        return updated

    async def rotate(self, trigger_id: str, *, grace: float) -> tuple[Trigger, str] | None:
        """A new secret now; the old one keeps working for `grace` seconds."""
        secret = new_secret()
        now = utcnow()
        # One statement: the right-hand sides read the row as it was, so the previous
        # hash is the one being replaced even when two rotations race.
        count = await self._change(
            trigger_id,
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
        await self._change(
            trigger_id,
            "UPDATE triggers SET revoked_at = ?, updated_at = ? WHERE id = ? AND revoked_at IS NULL",
            (now, now, trigger_id),
        )
        return await self.get(trigger_id)

    async def _change(self, trigger_id: str, sql: str, params: Sequence[Any]) -> int:
        """Write a change to a trigger with its row in ``trigger_changes`` (what gateways
        follow to evict their cached copy, `gateway.invalidation`) in one transaction; on
        PostgreSQL its notification too, delivered when that commits. The rows `sql` changed.

        A statement that changed nothing (a repeated revoke) still records a change: an
        eviction too many costs one read.
        """
        statements: list[tuple[str, Sequence[Any]]] = [
            (sql, params),
            ("INSERT INTO trigger_changes (trigger_id, at) VALUES (?, ?)", (trigger_id, utcnow())),
        ]
        if isinstance(self._db, PostgresDriver):
            statements.append(("SELECT pg_notify(?, ?)", (CHANGES_CHANNEL, trigger_id)))
        return await self._execute_in_one(statements)

    async def listen_changes(self, on_change: Callable[[str], None]) -> Listener | None:
        """Call `on_change(trigger_id)` as changes commit, on a connection of its own;
        None when the database cannot push them (SQLite: follow `changes_since`)."""
        if not isinstance(self._db, PostgresDriver):
            return None
        return await self._db.listen(CHANGES_CHANNEL, on_change)

    async def changes_since(self, after: int | None) -> tuple[int, builtins.list[str]]:
        """The latest change number and the triggers changed after `after` (None: just the number)."""
        if after is None:
            rows = await self._fetch("SELECT MAX(id) AS last FROM trigger_changes")
            return int(rows[0]["last"] or 0), []
        rows = await self._fetch(
            "SELECT id, trigger_id FROM trigger_changes WHERE id > ? ORDER BY id LIMIT 1000",
            (after,),
        )
        if not rows:
            return after, []
        return int(rows[-1]["id"]), [str(r["trigger_id"]) for r in rows]

    async def prune_audit(self, before: datetime) -> int:
        """Delete audit entries older than `before` (and trigger changes); how many entries."""
        await self._execute("DELETE FROM trigger_changes WHERE at < ?", (before,))
        return await self._execute("DELETE FROM audit WHERE at < ?", (before,))

    async def record_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append entries to the audit trail in one write."""
        if not entries:
            return
        marks = ", ".join("?" for _ in _AUDIT_COLUMNS)
        await self._execute_many(
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


class SqliteTriggerStore(SqlTriggerStore):
    """Triggers in one SQLite file, safe to share between processes on one machine."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(SqliteDriver(str(path)))


class PostgresTriggerStore(SqlTriggerStore):
    """Triggers in PostgreSQL, shared by any number of gateways and CLIs."""

    def __init__(self, dsn: str, *, max_size: int = 10) -> None:
        super().__init__(PostgresDriver(dsn, max_size=max_size))


def open_store(database: str) -> TriggerStore:
    """The store named by a `TRIGGERS_DATABASE` URL (not connected until first use)."""
    dialect, target = parse_database(database)
    if dialect == "sqlite":
        return SqliteTriggerStore(target)
    return PostgresTriggerStore(target)
