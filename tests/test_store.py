"""The trigger store and the migrations: the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from shared.audit import AuditEntry
from shared.jobs import JobRecord, open_job_store
from shared.messages import utcnow
from shared.migrations import MIGRATIONS, Migration
from shared.policy import PolicyChanges, PolicyError
from shared.store import (
    PostgresTriggerStore,
    SqliteTriggerStore,
    SqlTriggerStore,
    TriggerRevokedError,
    open_store,
)
from shared.triggers import hash_secret
from tests.support.databases import each_backend, schema_versions
from tests.support.messages import result_event
from tests.support.waiting import eventually

# Every test here that uses a database runs on SQLite and on PostgreSQL.
backend = each_backend


async def _all_text(database_url: str) -> str:
    """Every value of every table, as one string, to search for secrets."""
    if database_url.startswith("postgresql://"):
        conn = await asyncpg.connect(database_url)
        try:
            parts = []
            for table in ("triggers", "audit", "schema_version"):
                parts += [repr(dict(r)) for r in await conn.fetch(f"SELECT * FROM {table}")]  # noqa: S608 - constant names
            return "\n".join(parts)
        finally:
            await conn.close()
    conn2 = sqlite3.connect(database_url.removeprefix("sqlite:///"))
    try:
        rows = []
        for table in ("triggers", "audit", "schema_version"):
            rows += [repr(r) for r in conn2.execute(f"SELECT * FROM {table}")]  # noqa: S608 - constant names
        return "\n".join(rows)
    finally:
        conn2.close()


async def test_create_and_get_round_trip_with_policy(
    any_store: SqlTriggerStore, database_url: str
) -> None:
    """A created trigger reads back field for field; only the secret's hash is stored."""
    trigger, secret = await any_store.create(
        cluster="demo",
        app="shop",
        action="scale",
        service="web",
        policy=PolicyChanges(
            min_replicas=1,
            max_replicas=5,
            cooldown=30,
            rate_limit=10,
            expires_in=3600,
            allowed_methods=["POST"],
        ),
    )
    loaded = await any_store.get(trigger.id)
    assert loaded == trigger
    assert (loaded.min_replicas, loaded.max_replicas, loaded.cooldown) == (1, 5, 30)
    assert loaded.rate_limit == 10
    assert loaded.allowed_methods == ("POST",)
    assert loaded.expires_at is not None
    assert loaded.expires_at - loaded.created_at == timedelta(seconds=3600)
    assert loaded.secret_hash == hash_secret(secret)
    assert loaded.state(utcnow()) == "active"
    assert secret not in await _all_text(database_url)
    assert await any_store.get("nosuchtrigger1") is None


async def test_list_filters_by_target_action_and_state(any_store: SqlTriggerStore) -> None:
    """list() filters on cluster, app, action and state, newest first, with paging."""
    a, _ = await any_store.create(cluster="demo", app="shop", action="redeploy")
    b, _ = await any_store.create(cluster="demo", app="shop", action="scale", service="web")
    c, _ = await any_store.create(cluster="prod", app="blog", action="redeploy")
    d, _ = await any_store.create(
        cluster="prod", app="blog", action="redeploy", policy=PolicyChanges(enabled=False)
    )
    await any_store.revoke(a.id)

    assert [t.id for t in await any_store.list()] == [d.id, c.id, b.id]
    assert [t.id for t in await any_store.list(include_revoked=True)] == [d.id, c.id, b.id, a.id]
    assert [t.id for t in await any_store.list(cluster="demo")] == [b.id]
    assert [t.id for t in await any_store.list(app="blog", action="redeploy")] == [d.id, c.id]
    assert [t.id for t in await any_store.list(state="revoked")] == [a.id]
    assert [t.id for t in await any_store.list(state="disabled")] == [d.id]
    assert [t.id for t in await any_store.list(state="active")] == [c.id, b.id]
    assert [t.id for t in await any_store.list(limit=2, offset=1)] == [c.id, b.id]


async def test_expired_triggers_are_listed_as_expired(any_store: SqlTriggerStore) -> None:
    """A trigger past its expiry time reports state expired, in list() and on the object."""
    trigger, _ = await any_store.create(
        cluster="demo", app="shop", action="redeploy", policy=PolicyChanges(expires_in=1)
    )
    assert trigger.expires_at is not None
    assert trigger.state(trigger.expires_at - timedelta(milliseconds=1)) == "active"
    assert trigger.state(trigger.expires_at) == "expired"
    # The store's own clock decides: ask until it lists the trigger as expired.

    async def expired() -> list[str] | None:
        listed = [t.id for t in await any_store.list(state="expired")]
        return listed or None

    assert await eventually(expired, what="the expiry", within=10) == [trigger.id]


async def test_update_merges_and_checks_the_whole_policy(any_store: SqlTriggerStore) -> None:
    """update() changes only what is given, null clears, and min > max is refused."""
    trigger, _ = await any_store.create(
        cluster="demo",
        app="shop",
        action="scale",
        service="web",
        policy=PolicyChanges(max_replicas=5),
    )
    updated = await any_store.update(trigger.id, PolicyChanges(min_replicas=2, cooldown=60))
    assert updated is not None
    assert (updated.min_replicas, updated.max_replicas, updated.cooldown) == (2, 5, 60)
    assert await any_store.get(trigger.id) == updated

    with pytest.raises(PolicyError, match="above max_replicas"):
        await any_store.update(trigger.id, PolicyChanges(max_replicas=1))
    cleared = await any_store.update(trigger.id, PolicyChanges(max_replicas=None, enabled=False))
    assert cleared is not None
    assert (cleared.max_replicas, cleared.enabled, cleared.min_replicas) == (None, False, 2)
    assert await any_store.update("nosuchtrigger1", PolicyChanges(enabled=True)) is None


async def test_bounds_apply_to_scaling_triggers_only(any_store: SqlTriggerStore) -> None:
    """Replica bounds on a redeploy trigger are refused with a message saying why."""
    with pytest.raises(PolicyError, match="scaling triggers only"):
        await any_store.create(
            cluster="demo", app="shop", action="redeploy", policy=PolicyChanges(max_replicas=3)
        )


async def test_rotate_keeps_the_old_secret_for_the_grace_period(
    any_store: SqlTriggerStore, database_url: str
) -> None:
    """After rotate, both secrets match during the grace period and only the new one after."""
    trigger, old = await any_store.create(cluster="demo", app="shop", action="redeploy")
    rotated = await any_store.rotate(trigger.id, grace=300)
    assert rotated is not None
    after, new = rotated
    now = utcnow()
    assert new != old
    assert after.accepts_secret(new, now)
    assert after.accepts_secret(old, now)
    assert not after.accepts_secret(old, now + timedelta(seconds=301))
    assert after.accepts_secret(new, now + timedelta(seconds=301))
    assert new not in await _all_text(database_url)

    again = await any_store.rotate(trigger.id, grace=0)
    assert again is not None
    latest, newest = again
    assert not latest.accepts_secret(old, utcnow())
    assert not latest.accepts_secret(new, utcnow())
    assert latest.accepts_secret(newest, utcnow())


async def test_revoked_triggers_cannot_be_rotated_or_updated(any_store: SqlTriggerStore) -> None:
    """rotate and update on a revoked trigger raise; revoke is idempotent; unknown is None."""
    trigger, _ = await any_store.create(cluster="demo", app="shop", action="redeploy")
    first = await any_store.revoke(trigger.id)
    second = await any_store.revoke(trigger.id)
    assert first is not None
    assert second is not None
    assert first.revoked_at == second.revoked_at
    with pytest.raises(TriggerRevokedError):
        await any_store.rotate(trigger.id, grace=10)
    with pytest.raises(TriggerRevokedError):
        await any_store.update(trigger.id, PolicyChanges(enabled=False))
    assert await any_store.rotate("nosuchtrigger1", grace=10) is None
    assert await any_store.revoke("nosuchtrigger1") is None


async def test_a_change_and_its_change_row_commit_together(any_store: SqlTriggerStore) -> None:
    """A change whose change row cannot be written is rolled back, so no gateway misses it;
    a revocation adds its row (and, on PostgreSQL, its notification) with the change."""
    trigger, _ = await any_store.create(cluster="demo", app="shop", action="redeploy")
    last, _ = await any_store.changes_since(None)
    with pytest.raises(Exception, match=r"no_such_table|no such table"):
        await any_store._execute_in_one(
            [
                ("UPDATE triggers SET enabled = ? WHERE id = ?", (False, trigger.id)),
                ("INSERT INTO no_such_table (x) VALUES (?)", (1,)),
            ]
        )
    kept = await any_store.get(trigger.id)
    assert kept is not None
    assert kept.enabled
    await any_store.revoke(trigger.id)
    assert await any_store.changes_since(last) == (last + 1, [trigger.id])


async def test_audit_entries_are_listed_newest_first_and_filtered(
    any_store: SqlTriggerStore,
) -> None:
    """Audit entries round-trip and filter by trigger and outcome, with paging back by id."""
    now = utcnow()
    entries = [
        AuditEntry(
            at=now + timedelta(milliseconds=i),
            outcome="accepted" if i % 2 else "rejected",
            status=202 if i % 2 else 403,
            trigger_id="t1" if i < 3 else "t2",
            reason=None if i % 2 else "forbidden",
            remote="10.0.0.1",
            user_agent="curl/8",
            method="POST",
        )
        for i in range(5)
    ]
    await any_store.record_audit(entries)
    listed = await any_store.list_audit()
    assert [e.at for e in listed] == [e.at for e in reversed(entries)]
    assert all(e.id is not None for e in listed)
    assert listed[0].user_agent == "curl/8"
    assert [e.trigger_id for e in await any_store.list_audit(trigger_id="t1")] == ["t1"] * 3
    rejected = await any_store.list_audit(outcome="rejected")
    assert {e.reason for e in rejected} == {"forbidden"}
    assert len(rejected) == 3
    page = await any_store.list_audit(limit=2)
    older = await any_store.list_audit(limit=10, before_id=page[-1].id)
    assert [e.id for e in page + older] == [e.id for e in listed]


async def test_migrations_are_safe_from_several_processes_at_once(database_url: str) -> None:
    """Trigger stores and job stores starting together on one fresh database apply each
    migration once, and each then finds its tables."""
    triggers = [open_store(database_url) for _ in range(3)]
    jobs = [open_job_store(database_url) for _ in range(2)]
    try:
        await asyncio.gather(*(s.start() for s in triggers), *(s.start() for s in jobs))
        created, _ = await triggers[0].create(cluster="demo", app="shop", action="redeploy")
        assert await triggers[2].get(created.id) == created
        await jobs[0].record(JobRecord.from_event(result_event("c" * 32)))
        assert await jobs[1].get("c" * 32) is not None
    finally:
        for trigger_store in triggers:
            await trigger_store.close()
        for job_store in jobs:
            await job_store.close()
    assert await schema_versions(database_url) == [m.version for m in MIGRATIONS]


async def test_a_migration_numbered_below_the_latest_applied_still_runs(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions land out of order (they are handed out in blocks): a database already at the
    latest version gets a lower-numbered migration that shipped after it, once."""
    latest = MIGRATIONS[-1].version
    early = Migration(latest + 10, "landed first", ("CREATE TABLE landed_first (id INTEGER)",))
    late = Migration(latest + 5, "landed later", ("CREATE TABLE landed_later (id INTEGER)",))
    monkeypatch.setattr("shared.sql.MIGRATIONS", (*MIGRATIONS, early))
    first = open_store(database_url)
    await first.start()
    await first.close()
    monkeypatch.setattr("shared.sql.MIGRATIONS", (*MIGRATIONS, late, early))
    for _ in range(2):
        second = open_store(database_url)
        await second.start()
        await second.close()
    assert await schema_versions(database_url) == [
        *(m.version for m in MIGRATIONS),
        late.version,
        early.version,
    ]


_OLD_SCHEMA = """
CREATE TABLE triggers (
    id TEXT PRIMARY KEY, cluster TEXT NOT NULL, app TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('redeploy', 'scale')), service TEXT,
    image_update INTEGER NOT NULL DEFAULT 0, NAMESPACE_COLUMN secret_hash TEXT NOT NULL,
    created_at TEXT NOT NULL, revoked_at TEXT);
INSERT INTO triggers (id, cluster, app, action, secret_hash, created_at) VALUES
    ('oldtrigger01', 'demo', 'shop', 'redeploy', 'ab', '2026-01-02T03:04:05+00:00');
"""


@pytest.mark.unit
@pytest.mark.parametrize("namespace_column", ["", "namespace TEXT,"])
async def test_sqlite_file_from_before_migrations_is_adopted(
    tmp_path: Path, namespace_column: str
) -> None:
    """A store file written before versioned migrations (with or without the namespace
    column) keeps its triggers, with the default policy."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_SCHEMA.replace("NAMESPACE_COLUMN", namespace_column))
    conn.close()
    store = SqliteTriggerStore(path)
    trigger = await store.get("oldtrigger01")
    assert trigger is not None
    assert (trigger.enabled, trigger.max_replicas, trigger.allowed_methods) == (
        True,
        None,
        ("GET", "POST"),
    )
    assert trigger.namespace is None
    assert trigger.state(utcnow()) == "active"
    created, _ = await store.create(cluster="demo", app="shop", action="redeploy", namespace="ns-a")
    assert (await store.get(created.id)) == created


@pytest.mark.unit
def test_open_store_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    """sqlite:/// and postgresql:// URLs pick their backend; anything else says what to set."""
    assert isinstance(open_store(f"sqlite:///{tmp_path / 'x.db'}"), SqliteTriggerStore)
    assert isinstance(open_store("postgresql://u@127.0.0.1/db"), PostgresTriggerStore)
    with pytest.raises(ValueError, match="TRIGGERS_DATABASE"):
        open_store("mysql://x")
