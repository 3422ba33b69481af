"""The durable record of applied jobs: what each job changed, kept in the project's store.

The adapters of Swarm and Kubernetes record each job on the workload itself, in the same
versioned write as the change (workers/orchestrators/ledger.py). That record is atomic with
the change but belongs to the platform: ``docker service rollback``, an automatic rollback,
``docker stack deploy`` or ``kubectl replace`` rewrite the labels or annotations and erase
it. So the worker also keeps the job's change in this table, written once the change is
applied and before its result is published, and checks it before applying: a job found
here is answered from here and never applied again, whatever happened to the workload.

Between the platform write and this row (a crash in that gap) the workload's own record
still answers a redelivery, unless the platform rewrites it in that same gap.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import msgspec

from shared.encoding import json_text
from shared.messages import Target, utcnow
from shared.sql import PostgresDriver, SqlBackend, SqliteDriver, parse_database
from workers.orchestrators.base import Change

__all__ = ["AppliedJobs", "open_applied_jobs"]

_decoder = msgspec.json.Decoder(Change)

_INSERT = """
INSERT INTO applied_jobs (job_id, orchestrator, cluster, app, service, change, applied_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (job_id) DO NOTHING
"""


class AppliedJobs(SqlBackend):
    """The applied-jobs table of the store at `TRIGGERS_DATABASE`."""

    async def get(self, job_id: str) -> Change | None:
        """The change the job made, if it was applied; None otherwise."""
        rows = await self._fetch("SELECT change FROM applied_jobs WHERE job_id = ?", [job_id])
        return _decoder.decode(rows[0]["change"]) if rows else None

    async def record(self, job_id: str, orchestrator: str, target: Target, change: Change) -> None:
        """Keep the job's change; a job recorded already keeps its first change."""
        await self._execute(
            _INSERT,
            [
                job_id,
                orchestrator,
                target.cluster,
                target.app,
                target.service,
                json_text(change),
                utcnow(),
            ],
        )

    async def prune(self, older_than: datetime) -> int:
        """Forget jobs applied before `older_than` (the job history's retention); how many."""
        return await self._execute("DELETE FROM applied_jobs WHERE applied_at < ?", [older_than])


def open_applied_jobs(database: str) -> AppliedJobs:
    """The applied-jobs table of a `TRIGGERS_DATABASE` URL (not connected until first use)."""
    dialect, target = parse_database(database)
    if dialect == "sqlite":
        return AppliedJobs(SqliteDriver(str(Path(target))))
    return AppliedJobs(PostgresDriver(target, max_size=4))
