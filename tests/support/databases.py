"""Database fixtures: SQLite by default, PostgreSQL (a private database per session, a fresh
schema per test) for tests marked `on_both_databases` or modules that say
`backend = each_backend`."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from shared.jobs import JobStore, open_job_store
from shared.settings import Settings
from shared.store import (
    PostgresTriggerStore,
    SqliteTriggerStore,
    SqlTriggerStore,
    TriggerStore,
    open_store,
)

__all__ = ["BACKENDS", "POSTGRES", "each_backend", "on_both_databases", "schema_versions"]

POSTGRES = os.environ.get("TRIGGERS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

BACKENDS = ("sqlite", "postgresql")
# Runs a test once per database; every fixture below `settings` follows (see `backend`).
on_both_databases = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


async def _pg_admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of its own for the session, dropped at the end."""
    name = f"triggers_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(POSTGRES, f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(_pg_admin(POSTGRES, f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A fresh schema in the session's database, so each test migrates from nothing."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(pg_database, f'CREATE SCHEMA "{schema}"'))
    return f"{pg_database}?search_path={schema}"


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The test's database: SQLite, unless the test is marked `on_both_databases`."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(params=[pytest.param("sqlite", marks=pytest.mark.unit), "postgresql"])
def each_backend(request: pytest.FixtureRequest) -> str:
    """Each database in turn: a module whose every database test runs on both says
    `backend = each_backend` (tests that use no database run once).

    For modules of store tests, which need nothing but the database: their SQLite runs are
    in the unit lane.
    """
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh `TRIGGERS_DATABASE` of the test's backend: a file, or a schema of its own."""
    if backend == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    return f"sqlite:///{tmp_path / 'triggers.db'}"


async def schema_versions(database_url: str) -> list[int]:
    """The migration versions recorded, in order, duplicates included."""
    query = "SELECT version FROM schema_version ORDER BY version"
    if database_url.startswith("postgresql://"):
        conn = await asyncpg.connect(database_url)
        try:
            return [r["version"] for r in await conn.fetch(query)]
        finally:
            await conn.close()
    conn2 = sqlite3.connect(database_url.removeprefix("sqlite:///"))
    try:
        return [r[0] for r in conn2.execute(query)]
    finally:
        conn2.close()


@pytest.fixture
async def any_store(database_url: str) -> AsyncIterator[SqlTriggerStore]:
    """A started trigger store on the test's backend."""
    opened: SqlTriggerStore
    if database_url.startswith("postgresql://"):
        opened = PostgresTriggerStore(database_url, max_size=4)
    else:
        opened = SqliteTriggerStore(database_url.removeprefix("sqlite:///"))
    await opened.start()
    yield opened
    await opened.close()


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[TriggerStore]:
    """The test's trigger store."""
    opened = open_store(settings.database)
    yield opened
    await opened.close()


@pytest.fixture
async def jobs(settings: Settings) -> AsyncIterator[JobStore]:
    """The test's job history (the same database as the trigger store)."""
    opened = open_job_store(settings.database)
    yield opened
    await opened.close()
