"""Schema migrations of the database: one ordered list for SQLite and PostgreSQL.

The one database at `TRIGGERS_DATABASE` holds the triggers and their audit trail
(`shared/store.py`) and the job history (`shared/jobs.py`); whichever store starts
first brings the whole schema up to date.

To change the schema, append a `Migration` with the next version number; never edit one
that has shipped. Statements are written once for both databases; the few types that
differ are placeholders filled per dialect: ``{ts}`` (a timestamp), ``{bool}``,
``{true}``/``{false}``, ``{float}`` (a double) and ``{serial}`` (an auto-increment
primary key); a literal brace is doubled (``'{{}}'``). A nullable column is one
statement: ``ALTER TABLE triggers ADD COLUMN namespace TEXT``.

Migrations run when a process starts (`SqlBackend.start` in `shared/sql.py`), safe from
several at once: SQLite takes the write lock first (``BEGIN IMMEDIATE``), PostgreSQL an
advisory lock for the transaction; the second process then finds the work done. In SQLite an
``ADD COLUMN`` of a column that is already there is skipped: files written before
versioned migrations may have one (``namespace``, ``options``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = ["MIGRATIONS", "MIGRATION_LOCK", "Dialect", "Migration", "render"]

Dialect = Literal["sqlite", "postgresql"]

# pg_advisory_xact_lock key: "triggers" in ASCII, so it cannot collide by accident.
MIGRATION_LOCK = 0x7472696767657273

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {
        "ts": "TEXT",
        "bool": "INTEGER",
        "true": "1",
        "false": "0",
        "float": "REAL",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
    },
    "postgresql": {
        "ts": "TIMESTAMPTZ",
        "bool": "BOOLEAN",
        "true": "TRUE",
        "false": "FALSE",
        "float": "DOUBLE PRECISION",
        "serial": "BIGSERIAL PRIMARY KEY",
    },
}


class Migration(NamedTuple):
    """One schema step: applied once, in version order, in one transaction."""

    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    # Version 1 is the schema the first release created without a version table, so it
    # is written to adopt such a file unchanged.
    Migration(
        1,
        "triggers",
        (
            """CREATE TABLE IF NOT EXISTS triggers (
                id           TEXT PRIMARY KEY,
                cluster      TEXT NOT NULL,
                app          TEXT NOT NULL,
                action       TEXT NOT NULL CHECK (action IN ('redeploy', 'scale')),
                service      TEXT,
                image_update {bool} NOT NULL DEFAULT {false},
                secret_hash  TEXT NOT NULL,
                created_at   {ts} NOT NULL,
                revoked_at   {ts}
            )""",
            "CREATE INDEX IF NOT EXISTS triggers_by_app ON triggers (cluster, app)",
        ),
    ),
    Migration(2, "namespace", ("ALTER TABLE triggers ADD COLUMN namespace TEXT",)),
    # Registry and alert options, one JSON object (TriggerOptions).
    Migration(3, "options", ("ALTER TABLE triggers ADD COLUMN options TEXT",)),
    Migration(
        4,
        "policy and rotation",
        (
            "ALTER TABLE triggers ADD COLUMN enabled {bool} NOT NULL DEFAULT {true}",
            "ALTER TABLE triggers ADD COLUMN expires_at {ts}",
            "ALTER TABLE triggers ADD COLUMN min_replicas INTEGER",
            "ALTER TABLE triggers ADD COLUMN max_replicas INTEGER",
            "ALTER TABLE triggers ADD COLUMN cooldown INTEGER",
            "ALTER TABLE triggers ADD COLUMN rate_limit INTEGER",
            "ALTER TABLE triggers ADD COLUMN allowed_methods TEXT NOT NULL DEFAULT 'GET,POST'",
            "ALTER TABLE triggers ADD COLUMN previous_secret_hash TEXT",
            "ALTER TABLE triggers ADD COLUMN previous_secret_expires_at {ts}",
            "ALTER TABLE triggers ADD COLUMN rotated_at {ts}",
            "ALTER TABLE triggers ADD COLUMN updated_at {ts}",
        ),
    ),
    Migration(
        5,
        "audit trail",
        (
            """CREATE TABLE audit (
                id         {serial},
                at         {ts} NOT NULL,
                trigger_id TEXT,
                outcome    TEXT NOT NULL,
                status     INTEGER NOT NULL,
                reason     TEXT,
                detail     TEXT,
                method     TEXT,
                remote     TEXT,
                user_agent TEXT,
                job_id     TEXT,
                request_id TEXT
            )""",
            "CREATE INDEX audit_by_trigger ON audit (trigger_id, id)",
        ),
    ),
    # Job history. SQLite files may have the table already (job history created it itself
    # before it was migrated here), hence IF NOT EXISTS: such a table is the same one.
    Migration(
        6,
        "job history",
        (
            """CREATE TABLE IF NOT EXISTS jobs (
                job_id         TEXT PRIMARY KEY,
                trigger_id     TEXT NOT NULL,
                action         TEXT NOT NULL,
                cluster        TEXT NOT NULL,
                app            TEXT NOT NULL,
                service        TEXT,
                status         TEXT NOT NULL,
                rank           INTEGER NOT NULL,
                correlation_id TEXT NOT NULL DEFAULT '',
                source         TEXT NOT NULL DEFAULT '{{}}',
                issued_at      {ts} NOT NULL,
                accepted_at    {ts},
                started_at     {ts},
                finished_at    {ts},
                duration_ms    {float},
                attempt        INTEGER NOT NULL DEFAULT 1,
                error          TEXT,
                result         TEXT,
                updated_at     {ts} NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (issued_at)",
            "CREATE INDEX IF NOT EXISTS jobs_by_app ON jobs (cluster, app, issued_at)",
        ),
    ),
    # Audit retention prunes by time; unauthenticated rejections are one row per address
    # and minute, with how many calls it stands for.
    Migration(
        7,
        "audit retention and counts",
        (
            "ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1",
            "CREATE INDEX audit_by_time ON audit (at)",
        ),
    ),
    # Every change of a trigger (create, update, rotate, revoke) is a row here: gateways
    # follow it to evict their cached copies within a second (`gateway.invalidation`).
    Migration(
        8,
        "trigger changes",
        (
            """CREATE TABLE trigger_changes (
                id         {serial},
                trigger_id TEXT NOT NULL,
                at         {ts} NOT NULL
            )""",
        ),
    ),
    # The workers' record of applied jobs (workers/applied.py): the change each job made,
    # kept off the platform so a rollback or a re-deploy that rewrites the workloads'
    # labels cannot erase it.
    Migration(
        10,
        "applied jobs",
        (
            """CREATE TABLE applied_jobs (
                job_id       TEXT PRIMARY KEY,
                orchestrator TEXT NOT NULL,
                cluster      TEXT NOT NULL,
                app          TEXT NOT NULL,
                service      TEXT,
                change       TEXT NOT NULL,
                applied_at   {ts} NOT NULL
            )""",
            "CREATE INDEX applied_jobs_by_time ON applied_jobs (applied_at)",
        ),
    ),
    # Notifications (issue 19): whom a trigger notifies and whether it waits for approval,
    # the sinks results are delivered to, and global routes by cluster/app/status.
    Migration(
        17,
        "notification sinks",
        (
            "ALTER TABLE triggers ADD COLUMN notify TEXT",
            "ALTER TABLE triggers ADD COLUMN approvals INTEGER",
            "ALTER TABLE triggers ADD COLUMN approval_timeout INTEGER",
            """CREATE TABLE sinks (
                name       TEXT PRIMARY KEY,
                type       TEXT NOT NULL,
                url        TEXT NOT NULL,
                secret     TEXT,
                config     TEXT NOT NULL DEFAULT '{{}}',
                created_at {ts} NOT NULL
            )""",
            """CREATE TABLE notify_routes (
                id         {serial},
                sink       TEXT NOT NULL,
                cluster    TEXT NOT NULL DEFAULT '*',
                app        TEXT NOT NULL DEFAULT '*',
                statuses   TEXT NOT NULL DEFAULT '',
                created_at {ts} NOT NULL
            )""",
        ),
    ),
    # Approvals: a held call's command waits here (not in memory) until enough people
    # approve it, someone rejects it or it times out; `published_at` marks the command or
    # the rejected/expired result as published, so a crash in between is finished later.
    Migration(
        18,
        "approvals",
        (
            """CREATE TABLE approvals (
                job_id       TEXT PRIMARY KEY,
                trigger_id   TEXT NOT NULL,
                envelope     TEXT NOT NULL,
                required     INTEGER NOT NULL,
                approvers    TEXT NOT NULL DEFAULT '[]',
                state        TEXT NOT NULL,
                reason       TEXT,
                decided_by   TEXT,
                created_at   {ts} NOT NULL,
                expires_at   {ts} NOT NULL,
                decided_at   {ts},
                published_at {ts}
            )""",
            "CREATE INDEX approvals_by_state ON approvals (state, expires_at)",
            # Single-use approval links: a link's nonce is inserted when it is used.
            """CREATE TABLE approval_links (
                nonce   TEXT PRIMARY KEY,
                job_id  TEXT NOT NULL,
                used_by TEXT NOT NULL,
                used_at {ts} NOT NULL
            )""",
            # The key approval links are signed with: made once, by whoever needs it first.
            "CREATE TABLE notify_keys (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ),
    ),
    # E-mail digests: deliveries to a sink with a digest interval wait here (acked off the
    # queue) until one mail takes them all; `claim` marks those a notifier is sending.
    Migration(
        19,
        "notification digests",
        (
            """CREATE TABLE notify_digest (
                id         {serial},
                sink       TEXT NOT NULL,
                job_id     TEXT NOT NULL,
                delivery   TEXT NOT NULL,
                queued_at  {ts} NOT NULL,
                claim      TEXT,
                claimed_at {ts}
            )""",
            "CREATE INDEX notify_digest_by_sink ON notify_digest (sink, id)",
        ),
    ),
    # What a call with wait=N waited for (succeeded, failed, skipped, timed_out); the
    # call itself is `accepted` once its command was published.
    Migration(21, "audit wait outcome", ("ALTER TABLE audit ADD COLUMN wait_outcome TEXT",)),
    # Jobs by status (the gateway's /metrics gauge) from an index, not a scan of the table.
    Migration(
        22,
        "jobs by status",
        ("CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status)",),
    ),
    # The web console's sign-in sessions (shared/sessions.py): the SHA-256 of each session
    # token, never the token, so a read of the database signs nobody in.
    Migration(
        23,
        "console sessions",
        (
            """CREATE TABLE console_sessions (
                token_hash TEXT PRIMARY KEY,
                admin_tag  TEXT NOT NULL,
                created_at {ts} NOT NULL,
                expires_at {ts} NOT NULL,
                remote     TEXT,
                user_agent TEXT
            )""",
            "CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at)",
        ),
    ),
    # A trigger whose callers send X-Request-ID as their idempotency key (issue 13).
    Migration(
        24,
        "request id as idempotency key",
        ("ALTER TABLE triggers ADD COLUMN request_id_idempotency {bool} NOT NULL DEFAULT {false}",),
    ),
    # A running redeploy's rollout progress (JSON, per service) and when it was read: the
    # latest of its `running` notices, however they arrive.
    Migration(
        25,
        "job progress",
        (
            "ALTER TABLE jobs ADD COLUMN progress TEXT",
            "ALTER TABLE jobs ADD COLUMN progress_at {ts}",
        ),
    ),
)


def render(migration: Migration, dialect: Dialect) -> list[str]:
    """The migration's statements with the dialect's types filled in."""
    return [statement.format(**_TYPES[dialect]) for statement in migration.statements]
