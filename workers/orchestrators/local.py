"""The local orchestrator: a simulated cluster in one SQLite file.

Every process on the machine shares the file (`TRIGGERS_LOCAL_STATE`); each change runs in
a ``BEGIN IMMEDIATE`` transaction that also records the job, so two workers never lose
an update and a redelivered job never applies twice. A worker groups the commands it
holds into one transaction (each job in its own savepoint): one commit for many.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from shared.encoding import encode_json
from shared.errors import NotFoundError
from shared.group_commit import GroupCommit, Write
from shared.messages import ServiceState, Target, utcnow
from shared.sql import sqlite_transaction
from workers.orchestrators.base import Change, ProgressReport, redeploy_plan, scale_change

__all__ = ["LocalCluster", "LocalOrchestrator"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS services (
    cluster    TEXT NOT NULL,
    app        TEXT NOT NULL,
    service    TEXT NOT NULL,
    replicas   INTEGER NOT NULL CHECK (replicas >= 0),
    image      TEXT NOT NULL,
    revision   INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (cluster, app, service)
);
CREATE TABLE IF NOT EXISTS applied_jobs (
    job_id     TEXT PRIMARY KEY,
    change     BLOB NOT NULL,
    applied_at TEXT NOT NULL
);
"""

_change_decoder = msgspec.json.Decoder(Change)

Services = dict[str, ServiceState]


class LocalCluster:
    """Synchronous access to the simulated cluster file (used by the CLI and the adapter)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)

    def connect(self) -> sqlite3.Connection:
        """A connection to the cluster file, set up for writers sharing it."""
        return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connect()
        try:
            return sqlite_transaction(conn, fn)
        finally:
            conn.close()

    def set_service(
        self, cluster: str, app: str, service: str, *, replicas: int, image: str | None = None
    ) -> ServiceState:
        """Create or update one service; an existing image stays unless one is given."""
        if replicas < 0:
            msg = "replicas must be 0 or more"
            raise ValueError(msg)

        def upsert(conn: sqlite3.Connection) -> ServiceState:
            row = conn.execute(
                "SELECT image, revision FROM services WHERE cluster=? AND app=? AND service=?",
                (cluster, app, service),
            ).fetchone()
            new_image = image or (row["image"] if row else f"{service}:latest")
            revision = row["revision"] if row else 1
            conn.execute(
                "INSERT INTO services (cluster, app, service, replicas, image, revision,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (cluster, app, service) DO UPDATE SET"
                " replicas=excluded.replicas, image=excluded.image, updated_at=excluded.updated_at",
                (cluster, app, service, replicas, new_image, revision, utcnow().isoformat()),
            )
            return ServiceState(replicas=replicas, image=new_image, revision=revision)

        return self._transaction(upsert)

    def snapshot(self) -> dict[str, Any]:
        """``{"clusters": {C: {"apps": {A: {"services": {S: {...}}}}}}}``."""
        clusters: dict[str, Any] = {}
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM services ORDER BY cluster, app, service").fetchall()
        for row in rows:
            apps = clusters.setdefault(row["cluster"], {"apps": {}})["apps"]
            services = apps.setdefault(row["app"], {"services": {}})["services"]
            services[row["service"]] = {
                "replicas": row["replicas"],
                "image": row["image"],
                "revision": row["revision"],
            }
        return {"clusters": clusters}

    def services(self, target: Target) -> Services:
        """The target's services (all of the app's when the target names no service)."""
        conn = self._connect()
        try:
            return _read(conn, target)
        finally:
            conn.close()

    def applied(self, job_id: str) -> Change | None:
        """The change recorded for a job, if it was applied."""
        conn = self._connect()
        try:
            return _recorded(conn, job_id)
        finally:
            conn.close()

    def redeploy(self, job_id: str, target: Target, image: str | None) -> Change:
        """Raise the revision of every service of the app (or of the target's service) by
        one (once per job)."""
        return self._transaction(_redeploy_job(job_id, target, image))

    def scale(
        self,
        job_id: str,
        target: Target,
        delta: int,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
    ) -> Change:
        """Add `delta` replicas to one service within its bounds (once per job)."""
        return self._transaction(_scale_job(job_id, target, delta, min_replicas, max_replicas))


def _redeploy_job(job_id: str, target: Target, image: str | None) -> Write[Change]:
    """The redeploy of one job, to run inside a transaction the caller owns."""

    def apply(conn: sqlite3.Connection) -> Change:
        if (done := _recorded(conn, job_id)) is not None:
            return done
        # A service-bound trigger redeploys that service only.
        touched = Target(cluster=target.cluster, app=target.app, service=target.service)
        before = _read(conn, touched)
        if not before:
            if target.service and _read(conn, Target(cluster=target.cluster, app=target.app)):
                raise NotFoundError(_missing_service(target))
            raise NotFoundError(_missing_app(target))
        chosen, roll, detail = redeploy_plan(
            {n: [s.image] for n, s in before.items()}, target, image
        )
        now = utcnow().isoformat()
        for name in chosen:
            conn.execute(
                "UPDATE services SET revision = revision + 1, image = ?, updated_at = ?"
                " WHERE cluster=? AND app=? AND service=?",
                (image if roll else before[name].image, now, target.cluster, target.app, name),
            )
        after = _read(conn, touched)
        change = Change(
            status="succeeded",
            before={n: before[n] for n in chosen},
            after={n: after[n] for n in chosen},
            detail=detail,
            image=image,
        )
        _record(conn, job_id, change)
        return change

    return apply


def _scale_job(
    job_id: str,
    target: Target,
    delta: int,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
) -> Write[Change]:
    """The scaling of one job, to run inside a transaction the caller owns."""

    def apply(conn: sqlite3.Connection) -> Change:
        if (done := _recorded(conn, job_id)) is not None:
            return done
        if not target.service:
            msg = "a scale command must name a service"
            raise NotFoundError(msg)
        before = _read(conn, target)
        if target.service not in before:
            raise NotFoundError(_missing_service(target))
        change = scale_change(
            target.service,
            before[target.service],
            delta,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
        )
        if change.status == "succeeded":
            conn.execute(
                "UPDATE services SET replicas = ?, updated_at = ?"
                " WHERE cluster=? AND app=? AND service=?",
                (
                    change.after[target.service].replicas,
                    utcnow().isoformat(),
                    target.cluster,
                    target.app,
                    target.service,
                ),
            )
        _record(conn, job_id, change)
        return change

    return apply


def _read(conn: sqlite3.Connection, target: Target) -> Services:
    query = "SELECT service, replicas, image, revision FROM services WHERE cluster=? AND app=?"
    params: tuple[str, ...] = (target.cluster, target.app)
    if target.service:
        query += " AND service=?"
        params = (*params, target.service)
    return {
        row["service"]: ServiceState(
            replicas=row["replicas"], image=row["image"], revision=row["revision"]
        )
        for row in conn.execute(query + " ORDER BY service", params)
    }


def _recorded(conn: sqlite3.Connection, job_id: str) -> Change | None:
    row = conn.execute("SELECT change FROM applied_jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    change = _change_decoder.decode(row["change"])
    return msgspec.structs.replace(change, duplicate=True)


def _record(conn: sqlite3.Connection, job_id: str, change: Change) -> None:
    conn.execute(
        "INSERT INTO applied_jobs (job_id, change, applied_at) VALUES (?, ?, ?)",
        (job_id, encode_json(change), utcnow().isoformat()),
    )


def _missing_app(target: Target) -> str:
    return (
        f"application {target.app!r} not found in local cluster {target.cluster!r}; "
        f"create it with: triggers local set-app --cluster {target.cluster} --app {target.app}"
        " --service NAME --replicas N"
    )


def _missing_service(target: Target) -> str:
    return (
        f"service {target.service!r} of application {target.app!r} not found in local "
        f"cluster {target.cluster!r}"
    )


class LocalOrchestrator:
    """The `Orchestrator` over a `LocalCluster`, off the event loop, with group commit.

    Changes queue up while a batch is being written and go together into the next one:
    one SQLite transaction (one fsync) for everything that arrived meanwhile, instead of
    a connection, a lock and an fsync per command. Jobs are applied in the order they
    were asked for, so commands on one service keep their delivery order in this process.
    """

    name = "local"

    def __init__(self, path: str | Path) -> None:
        self.cluster = LocalCluster(path)
        self._batches: GroupCommit[Change] = GroupCommit(self.cluster.connect, "local-cluster")

    async def state(self, target: Target) -> Services:
        """The target's services."""
        return await asyncio.to_thread(self.cluster.services, target)

    async def recorded(self, job_id: str, target: Target) -> Change | None:
        """The job's change from the ledger (one ledger for the whole cluster file)."""
        return await asyncio.to_thread(self.cluster.applied, job_id)

    async def redeploy(
        self,
        job_id: str,
        target: Target,
        *,
        image: str | None = None,
        issued_at: datetime | None = None,
        progress: ProgressReport | None = None,
    ) -> Change:
        """Raise every service's revision (and roll `image` where it matches); there is
        no rollout to wait for, so no `progress` either."""
        return await self._batches.run(_redeploy_job(job_id, target, image))

    async def scale(
        self,
        job_id: str,
        target: Target,
        *,
        delta: int,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
    ) -> Change:
        """Add `delta` replicas within the bounds (and never below 0)."""
        return await self._batches.run(
            _scale_job(job_id, target, delta, min_replicas, max_replicas)
        )

    async def close(self) -> None:
        """Commit what is queued and close the writer's connection."""
        await self._batches.close()
