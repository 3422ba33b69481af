"""Job history: what became of every trigger call, kept for `TRIGGERS_JOB_RETENTION`.

A job moves accepted -> running -> succeeded | failed | skipped. Events may arrive out of
order (the recorder can see a result before the gateway wrote `accepted`), so a write
never moves a job backwards: each state has a rank and the higher rank wins; the first
result is kept (a redelivery's duplicate result changes nothing), except a `failed` one,
which a later result replaces (a job replayed from the dead-letter queue).

Same store as `shared/store.py`: one interface over the drivers of `shared/sql.py`, in the
database at `TRIGGERS_DATABASE` (SQLite or PostgreSQL, table ``jobs``, created by the
migrations of `shared/migrations.py`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import msgspec

from shared.encoding import json_text
from shared.errors import PermanentError
from shared.messages import (
    Action,
    CommandEnvelope,
    JobNotice,
    JobStatus,
    ResultEvent,
    RolloutProgress,
    Source,
    utcnow,
)
from shared.sql import PostgresDriver, Row, SqlBackend, SqliteDriver, parse_database

__all__ = [
    "JOB_STATUSES",
    "JobLookupError",
    "JobRecord",
    "JobStore",
    "PostgresJobStore",
    "SqlJobStore",
    "SqliteJobStore",
    "job_by_prefix",
    "job_json",
    "open_job_store",
    "opened_job_store",
    "parse_duration",
    "parse_since",
    "progress_text",
]

JOB_STATUSES: tuple[JobStatus, ...] = (
    "pending_approval",
    "accepted",
    "running",
    "succeeded",
    "failed",
    "skipped",
    "rejected",
    "expired",
)
# pending_approval ranks below accepted: an approved job moves on to `accepted`.
_RANK: dict[str, int] = {
    "pending_approval": -1,
    "accepted": 0,
    "running": 1,
    "succeeded": 2,
    "failed": 2,
    "skipped": 2,
    "rejected": 2,
    "expired": 2,
}

_COLUMNS = (
    "job_id",
    "trigger_id",
    "action",
    "cluster",
    "app",
    "service",
    "status",
    "rank",
    "correlation_id",
    "source",
    "issued_at",
    "accepted_at",
    "started_at",
    "finished_at",
    "duration_ms",
    "attempt",
    "error",
    "result",
    "progress",
    "progress_at",
    "updated_at",
)

# Every column is merged so that the job only moves forward, whatever the arrival order.
# One exception: a result that finished after a `failed` one replaces it whole (a job
# replayed from the dead-letter queue that then succeeded, or failed again, shows that
# latest outcome), and its attempts add to the earlier ones.
# Plain SQL with `?` placeholders and no database-only functions: one statement for both.
_LATER = (
    "(jobs.status = 'failed' AND excluded.rank = 2 AND excluded.finished_at IS NOT NULL"
    " AND (jobs.finished_at IS NULL OR excluded.finished_at > jobs.finished_at))"
)
# A rollout's progress: the most recently read wins (notices may arrive out of order).
_NEWER_PROGRESS = (
    "(excluded.progress_at IS NOT NULL"
    " AND (jobs.progress_at IS NULL OR excluded.progress_at > jobs.progress_at))"
)
_UPSERT = f"""
INSERT INTO jobs ({", ".join(_COLUMNS)})
VALUES ({", ".join("?" for _ in _COLUMNS)})
ON CONFLICT (job_id) DO UPDATE SET
    status = CASE WHEN excluded.rank > jobs.rank OR {_LATER} THEN excluded.status
                  ELSE jobs.status END,
    rank = CASE WHEN excluded.rank > jobs.rank THEN excluded.rank ELSE jobs.rank END,
    correlation_id = CASE WHEN jobs.correlation_id = '' THEN excluded.correlation_id
                          ELSE jobs.correlation_id END,
    accepted_at = COALESCE(jobs.accepted_at, excluded.accepted_at),
    started_at = COALESCE(jobs.started_at, excluded.started_at),
    finished_at = CASE WHEN {_LATER} THEN excluded.finished_at
                       ELSE COALESCE(jobs.finished_at, excluded.finished_at) END,
    duration_ms = CASE WHEN {_LATER} THEN excluded.duration_ms
                       ELSE COALESCE(jobs.duration_ms, excluded.duration_ms) END,
    attempt = CASE WHEN {_LATER} THEN jobs.attempt + excluded.attempt
                   WHEN excluded.attempt > jobs.attempt THEN excluded.attempt
                   ELSE jobs.attempt END,
    error = CASE WHEN {_LATER} THEN excluded.error ELSE COALESCE(jobs.error, excluded.error) END,
    result = CASE WHEN {_LATER} THEN excluded.result
                  ELSE COALESCE(jobs.result, excluded.result) END,
    progress = CASE WHEN {_NEWER_PROGRESS} THEN excluded.progress ELSE jobs.progress END,
    progress_at = CASE WHEN {_NEWER_PROGRESS} THEN excluded.progress_at
                       ELSE jobs.progress_at END,
    updated_at = excluded.updated_at
"""  # noqa: S608 - built from the constant column names above


# The gateway's `accepted` records: fewer columns, and only `accepted_at` to merge.
_ACCEPT = f"""
INSERT INTO jobs (job_id, trigger_id, action, cluster, app, service, status, rank,
                  correlation_id, source, issued_at, accepted_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, 'accepted', {_RANK["accepted"]}, ?, ?, ?, ?, ?)
ON CONFLICT (job_id) DO UPDATE SET accepted_at = COALESCE(jobs.accepted_at, excluded.accepted_at)
"""  # noqa: S608 - a constant


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One job as the history store and `GET /v1/jobs/{job_id}` show it."""

    job_id: str
    status: JobStatus
    trigger_id: str
    action: Action
    cluster: str
    app: str
    service: str | None
    correlation_id: str = ""
    source: Source = Source()
    issued_at: datetime
    accepted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    attempt: int = 1
    error: str | None = None
    result: ResultEvent | None = None
    # A redeploy's rollout, per service, as its latest `running` notice reported it.
    progress: dict[str, RolloutProgress] = {}
    progress_at: datetime | None = None

    @classmethod
    def accepted(cls, envelope: CommandEnvelope) -> JobRecord:
        """The job the gateway just had confirmed by the broker."""
        return cls(
            job_id=envelope.job_id,
            status="accepted",
            trigger_id=envelope.trigger_id,
            action=envelope.action,
            cluster=envelope.target.cluster,
            app=envelope.target.app,
            service=envelope.target.service,
            correlation_id=envelope.correlation_id,
            source=envelope.source,
            issued_at=envelope.issued_at,
            accepted_at=utcnow(),
        )

    @classmethod
    def from_event(cls, event: ResultEvent | JobNotice) -> JobRecord:
        """The job as a progress notice or a result event describes it."""
        common: dict[str, Any] = {
            "job_id": event.job_id,
            "status": event.status,
            "trigger_id": event.trigger_id,
            "action": event.action,
            "cluster": event.cluster,
            "app": event.app,
            "service": event.service,
            "correlation_id": event.correlation_id,
            "source": event.source,
            "attempt": event.attempt,
        }
        if isinstance(event, JobNotice):
            started = event.at if event.status == "running" else None
            return cls(
                **common,
                issued_at=event.issued_at or event.at,
                started_at=started,
                progress=event.progress,
                progress_at=event.progress_at if event.progress else None,
            )
        # A job that finished within TRIGGERS_RUNNING_NOTICE_AFTER had no `running` notice:
        # it started when its worker took it, `duration_ms` before it finished.
        started = (
            event.finished_at - timedelta(milliseconds=event.duration_ms)
            if event.duration_ms is not None
            else None
        )
        return cls(
            **common,
            issued_at=event.issued_at or event.finished_at,
            started_at=started,
            finished_at=event.finished_at,
            duration_ms=event.duration_ms,
            error=event.error,
            result=event,
        )


_source_decoder = msgspec.json.Decoder(Source)
_result_decoder = msgspec.json.Decoder(ResultEvent)
_progress_decoder = msgspec.json.Decoder(dict[str, RolloutProgress])


def _dt(value: str | datetime | None) -> datetime | None:
    # SQLite gives back the driver's fixed-width UTC text, PostgreSQL a datetime.
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


def _row_to_job(row: Row) -> JobRecord:
    issued = _dt(row["issued_at"])
    assert issued is not None  # noqa: S101 - the column is NOT NULL
    return JobRecord(
        job_id=row["job_id"],
        status=row["status"],
        trigger_id=row["trigger_id"],
        action=row["action"],
        cluster=row["cluster"],
        app=row["app"],
        service=row["service"],
        correlation_id=row["correlation_id"],
        source=_source_decoder.decode(row["source"]),
        issued_at=issued,
        accepted_at=_dt(row["accepted_at"]),
        started_at=_dt(row["started_at"]),
        finished_at=_dt(row["finished_at"]),
        duration_ms=row["duration_ms"],
        attempt=row["attempt"],
        error=row["error"],
        result=_result_decoder.decode(row["result"]) if row["result"] else None,
        progress=_progress_decoder.decode(row["progress"]) if row["progress"] else {},
        progress_at=_dt(row["progress_at"]),
    )


class JobStore(Protocol):
    """Where job history lives."""

    async def record(self, job: JobRecord) -> None:
        """Merge what is known about a job; never moves it backwards."""
        ...

    async def record_accepted(self, jobs: Sequence[JobRecord]) -> None:
        """Jobs the gateway just had confirmed (status `accepted`), in one transaction."""
        ...

    async def get(self, job_id: str) -> JobRecord | None:
        """One job, or None when unknown (or pruned)."""
        ...

    async def starting_with(self, prefix: str, limit: int = 2) -> list[JobRecord]:
        """Jobs whose id starts with `prefix` (lowercase hex), at most `limit`."""
        ...

    async def list(
        self,
        *,
        cluster: str | None = None,
        app: str | None = None,
        service: str | None = None,
        action: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        oldest_first: bool = False,
    ) -> list[JobRecord]:
        """Jobs issued at or after `since`, newest first unless `oldest_first`."""
        ...

    async def counts(self) -> dict[str, int]:
        """Jobs per status."""
        ...

    async def prune(self, older_than: datetime) -> int:
        """Forget jobs issued before `older_than`; return how many."""
        ...

    async def ping(self) -> None:
        """Raise when the store cannot be reached."""
        ...

    async def start(self) -> None:
        """Connect and migrate the schema; safe to call from several processes at once."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class SqlJobStore(SqlBackend):
    """The `JobStore` over a driver; the SQL is shared by both databases."""

    async def record(self, job: JobRecord) -> None:
        """Merge what is known about a job; never moves it backwards."""
        values = {
            "job_id": job.job_id,
            "trigger_id": job.trigger_id,
            "action": job.action,
            "cluster": job.cluster,
            "app": job.app,
            "service": job.service,
            "status": job.status,
            "rank": _RANK[job.status],
            "correlation_id": job.correlation_id,
            "source": json_text(job.source),
            "issued_at": job.issued_at,
            "accepted_at": job.accepted_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "duration_ms": job.duration_ms,
            "attempt": job.attempt,
            "error": job.error,
            "result": json_text(job.result) if job.result else None,
            "progress": json_text(job.progress) if job.progress else None,
            "progress_at": job.progress_at if job.progress else None,
            "updated_at": utcnow(),
        }
        await self._execute(_UPSERT, [values[c] for c in _COLUMNS])

    async def record_accepted(self, jobs: Sequence[JobRecord]) -> None:
        """Jobs the gateway just had confirmed, in one transaction.

        Only what is known at that point is written; a job some event recorded first
        keeps everything and gains its `accepted_at`.
        """
        if jobs:
            now = utcnow()
            await self._execute_many(
                _ACCEPT,
                [
                    (
                        job.job_id,
                        job.trigger_id,
                        job.action,
                        job.cluster,
                        job.app,
                        job.service,
                        job.correlation_id,
                        json_text(job.source),
                        job.issued_at,
                        job.accepted_at,
                        now,
                    )
                    for job in jobs
                ],
            )

    async def get(self, job_id: str) -> JobRecord | None:
        """One job, or None when unknown (or pruned)."""
        rows = await self._fetch("SELECT * FROM jobs WHERE job_id = ?", [job_id])
        return _row_to_job(rows[0]) if rows else None

    async def starting_with(self, prefix: str, limit: int = 2) -> list[JobRecord]:
        """Jobs whose id starts with `prefix` (lowercase hex), at most `limit`."""
        if not _JOB_PREFIX.fullmatch(prefix):
            return []
        # The id is hex: no LIKE wildcard can be in the prefix. A range keeps the index.
        rows = await self._fetch(
            "SELECT * FROM jobs WHERE job_id >= ? AND job_id < ? ORDER BY job_id LIMIT ?",
            [prefix, prefix + "g", limit],
        )
        return [_row_to_job(row) for row in rows]

    async def list(
        self,
        *,
        cluster: str | None = None,
        app: str | None = None,
        service: str | None = None,
        action: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        oldest_first: bool = False,
    ) -> list[JobRecord]:
        """Jobs issued at or after `since`, newest first unless `oldest_first`."""
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (
            ("cluster", cluster),
            ("app", app),
            ("service", service),
            ("action", action),
            ("status", status),
        ):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("issued_at >= ?")
            params.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ASC" if oldest_first else "DESC"
        query = f"SELECT * FROM jobs {where} ORDER BY issued_at {order}, job_id LIMIT ?"  # noqa: S608 - columns and order are constants
        params.append(limit)
        return [_row_to_job(row) for row in await self._fetch(query, params)]

    async def counts(self) -> dict[str, int]:
        """Jobs per status."""
        rows = await self._fetch("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {str(row["status"]): int(row["n"]) for row in rows}

    async def prune(self, older_than: datetime) -> int:
        """Forget jobs issued before `older_than`; return how many.

        The workers' record of applied jobs (workers/applied.py) is kept as long.
        """
        await self._execute("DELETE FROM applied_jobs WHERE applied_at < ?", [older_than])
        return await self._execute("DELETE FROM jobs WHERE issued_at < ?", [older_than])

    async def ping(self) -> None:
        """Raise the driver's error when the database cannot be reached and read."""
        await self._fetch("SELECT 1 FROM jobs LIMIT 1")


class SqliteJobStore(SqlJobStore):
    """Job history in the SQLite file of the trigger store (a table of its own)."""

    def __init__(self, path: str | Path) -> None:
        # History is not the source of truth (the broker and the cluster are): NORMAL
        # skips the fsync that would otherwise be most of what recording `accepted` adds
        # to a trigger call. Recording `accepted` is on every trigger call: concurrent
        # writes share one transaction on one connection (group commit), not one each.
        super().__init__(SqliteDriver(str(path), synchronous="NORMAL", group_commit="job-store"))


class PostgresJobStore(SqlJobStore):
    """Job history in the PostgreSQL database of the trigger store."""

    def __init__(self, dsn: str, *, max_size: int = 10) -> None:
        super().__init__(PostgresDriver(dsn, max_size=max_size))


def open_job_store(database: str) -> JobStore:
    """The job store named by a `TRIGGERS_DATABASE` URL (not connected until first use)."""
    dialect, target = parse_database(database)
    if dialect == "sqlite":
        return SqliteJobStore(target)
    return PostgresJobStore(target)


@contextlib.asynccontextmanager
async def opened_job_store(database: str) -> AsyncIterator[JobStore]:
    """The job store at `database` for one command, its connections closed after."""
    store = open_job_store(database)
    try:
        yield store
    finally:
        await store.close()


class JobLookupError(PermanentError, LookupError):
    """No job, or several (`ambiguous`), match an id prefix; the message says which."""

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


async def job_by_prefix(jobs: JobStore, id_or_prefix: str) -> JobRecord:
    """The one job whose id is, or starts with, `id_or_prefix` (as `triggers job` takes it)."""
    wanted = id_or_prefix.strip().lower()
    if not _JOB_PREFIX.fullmatch(wanted):
        msg = f"{id_or_prefix[:40]!r} is not a job id: up to 32 hex characters, as a 202 gives"
        raise JobLookupError(msg)
    found = await jobs.starting_with(wanted, limit=2)
    if not found:
        msg = f"no job {wanted}: unknown, or older than the history keeps"
        raise JobLookupError(msg)
    if len(found) > 1:
        msg = f"{wanted} is the start of several job ids; give more characters"
        raise JobLookupError(msg, ambiguous=True)
    return found[0]


def progress_text(progress: dict[str, RolloutProgress], service: str | None = None) -> str:
    """A rollout's progress in words: ``2/3 updated`` for the one service a job names
    (`service`), else ``api 1/1, web 2/3 updated``; "" when there is none."""
    if not progress:
        return ""
    if service is not None and list(progress) == [service]:
        only = progress[service]
        return f"{only.updated}/{only.total} updated"
    counts = ", ".join(f"{name} {p.updated}/{p.total}" for name, p in sorted(progress.items()))
    return f"{counts} updated"


def job_json(job: JobRecord, *, status_url: str | None = None) -> dict[str, Any]:
    """A job as the HTTP API and `--json` print it."""
    data: dict[str, Any] = msgspec.to_builtins(job)
    if status_url is not None:
        data["status_url"] = status_url
    return data


_JOB_PREFIX = re.compile(r"[0-9a-f]{1,32}")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w`` as a timedelta."""
    match = _DURATION.fullmatch(text)
    if not match:
        msg = f"expected a duration like 90s, 15m, 12h, 7d or 2w, got {text[:32]!r}"
        raise ValueError(msg)
    return timedelta(seconds=float(match[1]) * _UNIT[match[2]])


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """A duration ago (``15m``, ``2h``, ``1d``) or an ISO 8601 time (UTC when no zone)."""
    try:
        return (now or utcnow()) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        msg = (
            "since must be a duration (15m, 2h, 7d) or an ISO 8601 time "
            f"(2026-01-31T12:00:00Z), got {text[:40]!r}"
        )
        raise ValueError(msg) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)
