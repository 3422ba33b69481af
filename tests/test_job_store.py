"""Job history's store: the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Literal

import msgspec
import pytest

from shared.jobs import (
    JobRecord,
    PostgresJobStore,
    SqliteJobStore,
    SqlJobStore,
    open_job_store,
)
from shared.messages import (
    JobNotice,
    ResultEvent,
    RolloutProgress,
    Status,
    decode_job_event,
    encode,
    utcnow,
)
from shared.migrations import MIGRATIONS
from shared.sql import _multi_row
from tests.support.databases import each_backend, schema_versions
from tests.support.messages import result_event

# Every test here that uses a database runs on SQLite and on PostgreSQL.
backend = each_backend


@pytest.fixture
async def history(database_url: str) -> AsyncIterator[SqlJobStore]:
    """A started job store on the test's backend."""
    opened = open_job_store(database_url)
    assert isinstance(opened, SqlJobStore)
    await opened.start()
    yield opened
    await opened.close()


def _before_result(event: ResultEvent, status: Literal["accepted", "running"]) -> JobRecord:
    """The job as the gateway (accepted) or a worker's notice (running) records it."""
    at = utcnow()
    return msgspec.structs.replace(
        JobRecord.from_event(event),
        status=status,
        accepted_at=at if status == "accepted" else None,
        started_at=at if status == "running" else None,
        finished_at=None,
        duration_ms=None,
        result=None,
    )


async def test_concurrent_writes_in_any_order_end_with_the_result(history: SqlJobStore) -> None:
    """accepted, running and the result of 20 jobs written all at once: every job ends
    finished, with its result, its attempt and every timestamp, whatever won the race."""
    events = [
        result_event(f"{i:032x}", status="failed" if i % 5 == 0 else "succeeded") for i in range(20)
    ]
    writes = [
        history.record(record)
        for event in events
        for record in (
            JobRecord.from_event(event),
            _before_result(event, "running"),
            _before_result(event, "accepted"),
        )
    ]
    await asyncio.gather(*writes)
    for event in events:
        job = await history.get(event.job_id)
        assert job is not None
        assert (job.status, job.result, job.attempt) == (event.status, event, event.attempt)
        assert None not in (job.accepted_at, job.started_at, job.finished_at)
        assert job.duration_ms == event.duration_ms
        assert job.correlation_id == event.correlation_id
        assert job.source == event.source
    assert await history.counts() == {"succeeded": 16, "failed": 4}


async def test_list_filters_orders_and_limits(history: SqlJobStore) -> None:
    """list() filters on status and since, newest first (or oldest first), up to limit."""
    for i, ago in enumerate((7200, 600, 60, 30)):
        status: Status = "failed" if i == 2 else "succeeded"
        await history.record(
            JobRecord.from_event(result_event(f"{i:032x}", status=status, ago=ago))
        )
    recent = await history.list(since=utcnow() - timedelta(hours=1))
    assert [j.job_id[-1] for j in recent] == ["3", "2", "1"]
    oldest = await history.list(oldest_first=True, limit=2)
    assert [j.job_id[-1] for j in oldest] == ["0", "1"]
    assert [j.job_id[-1] for j in await history.list(status="failed")] == ["2"]
    assert await history.list(app="blog") == []


async def test_record_accepted_never_moves_a_job_back_and_prune(history: SqlJobStore) -> None:
    """A batch of `accepted` records never moves a job back; prune counts what it drops."""
    done = result_event("a" * 32, ago=7200)
    pending = result_event("b" * 32)
    await history.record(JobRecord.from_event(done))
    # The gateway's batch arrives after the recorder wrote `done`'s result.
    await history.record_accepted(
        [_before_result(done, "accepted"), _before_result(pending, "accepted")]
    )
    await history.record_accepted([])
    kept = await history.get(done.job_id)
    assert kept is not None
    assert kept.status == "succeeded"
    assert kept.result is not None
    waiting = await history.get(pending.job_id)
    assert waiting is not None
    assert waiting.status == "accepted"
    assert await history.prune(utcnow() - timedelta(hours=1)) == 1
    assert await history.get(done.job_id) is None
    assert await history.prune(utcnow() - timedelta(hours=1)) == 0


async def test_accepted_batches_of_every_size_are_written_whole(history: SqlJobStore) -> None:
    """Batches of any size land row for row (SQLite splits them into power-of-two chunks)."""
    sizes = (1, 3, 37, 64, 100)
    batches = [
        [_before_result(result_event(f"{size:03d}{i:029d}"), "accepted") for i in range(size)]
        for size in sizes
    ]
    for batch in batches:
        await history.record_accepted(batch)
    for batch in batches:
        for job in batch:
            stored = await history.get(job.job_id)
            assert stored is not None
            assert (stored.status, stored.trigger_id) == ("accepted", job.trigger_id)


@pytest.mark.unit
def test_multi_row_inserts_use_few_statement_texts() -> None:
    """Every batch size from 1 to 1,000 is covered by ten statement texts, rows in order."""
    texts: set[str] = set()
    for size in range(1, 1001):
        rows = [[n, f"row {n}"] for n in range(size)]
        statements = _multi_row("INSERT INTO t (a, b) VALUES (?, ?)", rows)
        texts.update(query for query, _ in statements)
        assert [v for _, values in statements for v in values] == [v for r in rows for v in r]
    assert len(texts) == 10  # 1, 2, 4, ... 512 rows


# The table as job history created it itself, before it was one of the migrations.
_OLD_JOBS = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, trigger_id TEXT NOT NULL, action TEXT NOT NULL,
    cluster TEXT NOT NULL, app TEXT NOT NULL, service TEXT, status TEXT NOT NULL,
    rank INTEGER NOT NULL, correlation_id TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '{}', issued_at TEXT NOT NULL, accepted_at TEXT,
    started_at TEXT, finished_at TEXT, duration_ms REAL, attempt INTEGER NOT NULL DEFAULT 1,
    error TEXT, result TEXT, updated_at TEXT NOT NULL);
INSERT INTO jobs (job_id, trigger_id, action, cluster, app, service, status, rank,
    issued_at, accepted_at, updated_at) VALUES
    ('dddddddddddddddddddddddddddddddd', 'tttttttttttttttt', 'redeploy', 'demo', 'shop',
     NULL, 'accepted', 0, '2026-01-02T03:04:05.000000+00:00',
     '2026-01-02T03:04:05.100000+00:00', '2026-01-02T03:04:05.100000+00:00');
"""


@pytest.mark.unit
async def test_sqlite_history_from_before_migrations_is_adopted(tmp_path: Path) -> None:
    """A SQLite file whose jobs table job history made itself keeps its jobs, and takes
    new ones, once the migrations have run."""
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(_OLD_JOBS)
    store = SqliteJobStore(path)
    old = await store.get("d" * 32)
    assert old is not None
    assert (old.status, old.action, old.issued_at.year) == ("accepted", "redeploy", 2026)
    event = result_event("e" * 32)
    await store.record(JobRecord.from_event(event))
    assert [j.job_id for j in await store.list()] == ["e" * 32, "d" * 32]
    assert await schema_versions(f"sqlite:///{path}") == [m.version for m in MIGRATIONS]


@pytest.mark.unit
def test_open_job_store_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    """sqlite:/// and postgresql:// URLs pick their backend; anything else says what to set."""
    assert isinstance(open_job_store(f"sqlite:///{tmp_path / 'x.db'}"), SqliteJobStore)
    assert isinstance(open_job_store("postgresql://u@127.0.0.1/db"), PostgresJobStore)
    with pytest.raises(ValueError, match="TRIGGERS_DATABASE must be sqlite"):
        open_job_store("mysql://x")


async def test_progress_keeps_the_latest_reading_whatever_the_arrival_order(
    history: SqlJobStore,
) -> None:
    """A running job's rollout progress is the most recently read one, even when an older notice arrives last, and stays with the job once its result is in."""
    event = result_event("c" * 32, status="succeeded")
    read = utcnow()

    def notice(updated: int, seconds: float) -> JobRecord:
        return msgspec.structs.replace(
            _before_result(event, "running"),
            progress={"web": RolloutProgress(updated=updated, total=3)},
            progress_at=read + timedelta(seconds=seconds),
        )

    await history.record(notice(0, 0))
    await history.record(notice(2, 2))
    await history.record(notice(1, 1))  # read before the 2/3 notice, delivered after it
    running = await history.get(event.job_id)
    assert running is not None
    assert (running.status, running.progress) == (
        "running",
        {"web": RolloutProgress(updated=2, total=3)},
    )
    assert running.progress_at == read + timedelta(seconds=2)
    await history.record(JobRecord.from_event(event))
    await history.record(_before_result(event, "running"))  # the announcement, no counts
    done = await history.get(event.job_id)
    assert done is not None
    assert (done.status, done.progress) == ("succeeded", running.progress)


@pytest.mark.unit
def test_notices_with_and_without_progress_read_both_ways() -> None:
    """A notice from a worker before rollout progress decodes with none, and a notice with progress decodes for a reader that predates it (the fields are optional, with defaults)."""

    class OldNotice(msgspec.Struct, kw_only=True):
        job_id: str
        status: str
        schema: str

    old = msgspec.json.encode(
        OldNotice(job_id="a" * 32, status="running", schema="triggers.notice.v1")
    )
    old = (
        old[:-1]
        + b', "trigger_id": "t", "action": "redeploy", "cluster": "c", "app": "a", "service": null}'
    )
    notice = decode_job_event(old)
    assert isinstance(notice, JobNotice)
    assert (notice.progress, notice.progress_at, notice.seq) == ({}, None, 0)
    current = JobNotice(
        job_id="b" * 32,
        trigger_id="t",
        action="redeploy",
        cluster="c",
        app="a",
        service=None,
        progress={"web": RolloutProgress(updated=1, total=3)},
        progress_at=utcnow(),
        seq=2,
    )
    read = msgspec.json.decode(encode(current), type=OldNotice)
    assert (read.job_id, read.status) == ("b" * 32, "running")
