"""Notification sinks, global routes and held calls (approvals), in the trigger database.

One store over the drivers of `shared/sql.py` (SQLite or PostgreSQL), tables created by
migrations 17 and 18. Sink secrets (a webhook's signing key, an SMTP password, the token
inside a Slack or Teams URL) must be kept in clear to be used, like a trigger's signing
key; they are shown once, at creation, and never again (`SinkView` redacts them).

Approvals change state only through conditional updates (``... WHERE state = 'pending'``
and the approver list read before), so two gateways deciding at once cannot both win.
"""

from __future__ import annotations

import base64
import builtins
import fnmatch
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shared.encoding import json_text
from shared.messages import CommandEnvelope, NotificationDelivery, utcnow
from shared.sql import PostgresDriver, Row, SqlBackend, SqliteDriver, parse_database

__all__ = [
    "SINK_NAME_PATTERN",
    "Approval",
    "ApprovalState",
    "NotifyStore",
    "Route",
    "RouteCreate",
    "RouteView",
    "Sink",
    "SinkCreate",
    "SinkType",
    "SinkView",
    "new_webhook_secret",
    "open_notify_store",
    "redact_url",
    "sink_view",
]

SinkType = Literal["webhook", "slack", "teams", "email"]
ApprovalState = Literal["pending", "approved", "rejected", "expired"]
SINK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
SinkName = Annotated[str, Meta(pattern=SINK_NAME_PATTERN)]
Glob = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_*?\[\]-]{1,63}$")]
RouteStatus = Literal[
    "succeeded", "failed", "skipped", "rejected", "expired", "pending_approval", "running"
]
Address = Annotated[str, Meta(pattern=r"^[^@\s<>,]+@[^@\s<>,]+$", max_length=254)]


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class SinkCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/sinks``: where notifications go.

    `url`: the webhook, Slack or Teams endpoint (http or https), or for e-mail the SMTP
    server ``smtp://user:password@host:587`` (STARTTLS and login; ``?starttls=off`` only
    for a relay on this machine) or ``smtps://...`` (TLS from the start).
    """

    name: SinkName
    type: SinkType
    url: Annotated[str, Meta(min_length=8, max_length=2000)]
    to: Annotated[list[Address], Meta(max_length=50)] = msgspec.field(default_factory=list)
    sender: Address | None = None
    # email: one mail per this many seconds listing every result, instead of one each.
    digest: Annotated[int, Meta(ge=1, le=7 * 24 * 3600)] | None = None

    def check(self) -> None:
        """Raise ValueError, naming what to fix, when the sink cannot work."""
        parts = urlsplit(self.url)
        if self.type == "email":
            if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
                msg = "an email sink's --url is the SMTP server: smtp://user:password@host:587"
                raise ValueError(msg)
            if not self.to:
                msg = "an email sink needs --to ADDRESS (one or more)"
                raise ValueError(msg)
            return
        if parts.scheme not in ("http", "https") or not parts.hostname:
            msg = f"a {self.type} sink's --url must be an http(s) URL"
            raise ValueError(msg)
        if self.to or self.sender or self.digest:
            msg = "--to, --from and --digest apply to email sinks only"
            raise ValueError(msg)


class Sink(msgspec.Struct, frozen=True, kw_only=True):
    """A stored sink, secrets included: for the notifier only, never printed."""

    name: str
    type: SinkType
    url: str
    secret: str | None = None
    to: tuple[str, ...] = ()
    sender: str | None = None
    digest: int | None = None
    created_at: datetime


class SinkView(msgspec.Struct, kw_only=True):
    """A sink as the API and ``--json`` show it; `secret` only when created."""

    name: str
    type: SinkType
    url: str
    to: list[str]
    created_at: datetime
    digest: int | None = None
    secret: str | UnsetType = UNSET


def redact_url(url: str) -> str:
    """The URL without what may be a secret: no password, path or query (Slack and Teams
    carry their token in the path)."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    tail = "/…" if parts.path not in ("", "/") or parts.query else ""
    return f"{parts.scheme}://{user}{parts.hostname or ''}{port}{tail}"


def sink_view(sink: Sink, *, with_secret: bool = False) -> SinkView:
    """What may be shown of a sink; the signing secret only right after creation."""
    return SinkView(
        name=sink.name,
        type=sink.type,
        url=redact_url(sink.url),
        to=list(sink.to),
        created_at=sink.created_at,
        digest=sink.digest,
        secret=sink.secret if with_secret and sink.secret else UNSET,
    )


class RouteCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/routes``: results of matching clusters/apps (globs) and statuses go to `sink`."""

    sink: SinkName
    cluster: Glob = "*"
    app: Glob = "*"
    # Empty: every status.
    statuses: Annotated[list[RouteStatus], Meta(max_length=7)] = msgspec.field(default_factory=list)


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """A global route: which results go to a sink whatever their trigger."""

    id: int
    sink: str
    cluster: str = "*"
    app: str = "*"
    statuses: tuple[str, ...] = ()
    created_at: datetime

    def matches(self, cluster: str, app: str, status: str) -> bool:
        """Whether a result of `cluster`/`app` with `status` takes this route.

        No statuses means every result and approval request; `running` notices only go
        where a route names them.
        """
        wanted = status in self.statuses if self.statuses or status == "running" else True
        return (
            wanted
            and fnmatch.fnmatchcase(cluster, self.cluster)
            and fnmatch.fnmatchcase(app, self.app)
        )


class RouteView(msgspec.Struct, kw_only=True):
    """A route as the API and ``--json`` show it."""

    id: int
    sink: str
    cluster: str
    app: str
    statuses: list[str]
    created_at: datetime


class Approval(msgspec.Struct, frozen=True, kw_only=True):
    """A held call: its command, who approved it so far, and what became of it."""

    job_id: str
    trigger_id: str
    envelope: CommandEnvelope
    required: int
    approvers: tuple[str, ...] = ()
    state: ApprovalState = "pending"
    reason: str | None = None
    decided_by: str | None = None
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    published_at: datetime | None = None


_envelope_decoder = msgspec.json.Decoder(CommandEnvelope)
_delivery_decoder = msgspec.json.Decoder(NotificationDelivery)


def _dt(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _sink(row: Row) -> Sink:
    config = msgspec.json.decode(row["config"] or "{}")
    return Sink(
        name=row["name"],
        type=row["type"],
        url=row["url"],
        secret=row["secret"],
        to=tuple(config.get("to", ())),
        sender=config.get("sender"),
        digest=config.get("digest"),
        created_at=_dt(row["created_at"]),
    )


def _route(row: Row) -> Route:
    return Route(
        id=int(row["id"]),
        sink=row["sink"],
        cluster=row["cluster"],
        app=row["app"],
        statuses=tuple(filter(None, row["statuses"].split(","))),
        created_at=_dt(row["created_at"]),
    )


def _approval(row: Row) -> Approval:
    return Approval(
        job_id=row["job_id"],
        trigger_id=row["trigger_id"],
        envelope=_envelope_decoder.decode(row["envelope"]),
        required=int(row["required"]),
        approvers=tuple(msgspec.json.decode(row["approvers"] or "[]")),
        state=row["state"],
        reason=row["reason"],
        decided_by=row["decided_by"],
        created_at=_dt(row["created_at"]),
        expires_at=_dt(row["expires_at"]),
        decided_at=_dt(row["decided_at"]),
        published_at=_dt(row["published_at"]),
    )


class NotifyStore(SqlBackend):
    """Sinks, routes, approvals and digests; the SQL is shared by both databases."""

    # --- sinks ---------------------------------------------------------------------

    async def create_sink(self, request: SinkCreate) -> Sink | None:
        """Store a new sink (a webhook gets its signing secret); None if the name is taken."""
        request.check()
        sink = Sink(
            name=request.name,
            type=request.type,
            url=request.url,
            secret=new_webhook_secret() if request.type == "webhook" else None,
            to=tuple(request.to),
            sender=request.sender,
            digest=request.digest,
            created_at=utcnow(),
        )
        config: dict[str, Any] = {"to": list(sink.to)}
        if sink.sender:
            config["sender"] = sink.sender
        if sink.digest:
            config["digest"] = sink.digest
        count = await self._execute(
            "INSERT INTO sinks (name, type, url, secret, config, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (sink.name, sink.type, sink.url, sink.secret, json_text(config),
             sink.created_at),
        )  # fmt: skip
        return sink if count == 1 else None

    async def get_sink(self, name: str) -> Sink | None:
        """The sink with this name, or None."""
        rows = await self._fetch("SELECT * FROM sinks WHERE name = ?", (name,))
        return _sink(rows[0]) if rows else None

    async def list_sinks(self) -> builtins.list[Sink]:
        """Every sink, by name."""
        return [_sink(r) for r in await self._fetch("SELECT * FROM sinks ORDER BY name")]

    async def missing_sinks(self, names: Sequence[str]) -> builtins.list[str]:
        """The names among `names` that are not sinks."""
        known = {sink.name for sink in await self.list_sinks()}
        return [name for name in names if name not in known]

    async def delete_sink(self, name: str) -> bool:
        """Delete a sink and its routes; False if there was none."""
        await self._execute("DELETE FROM notify_routes WHERE sink = ?", (name,))
        return await self._execute("DELETE FROM sinks WHERE name = ?", (name,)) == 1

    # --- routes --------------------------------------------------------------------

    async def add_route(self, request: RouteCreate) -> Route:
        """Store a global route."""
        rows = await self._fetch(
            "INSERT INTO notify_routes (sink, cluster, app, statuses, created_at)"
            " VALUES (?, ?, ?, ?, ?) RETURNING *",
            (request.sink, request.cluster, request.app, ",".join(request.statuses), utcnow()),
        )
        return _route(rows[0])

    async def list_routes(self) -> builtins.list[Route]:
        """Every global route, oldest first."""
        return [_route(r) for r in await self._fetch("SELECT * FROM notify_routes ORDER BY id")]

    async def delete_route(self, route_id: int) -> bool:
        """Delete a route; False if there was none."""
        return await self._execute("DELETE FROM notify_routes WHERE id = ?", (route_id,)) == 1

    # --- approvals -----------------------------------------------------------------

    async def hold(self, envelope: CommandEnvelope, required: int, wait: float) -> Approval:
        """Keep a call's command until it is approved, rejected or expires."""
        now = utcnow()
        approval = Approval(
            job_id=envelope.job_id,
            trigger_id=envelope.trigger_id,
            envelope=envelope,
            required=required,
            created_at=now,
            expires_at=now + timedelta(seconds=wait),
        )
        await self._execute(
            "INSERT INTO approvals (job_id, trigger_id, envelope, required, approvers, state,"
            " created_at, expires_at) VALUES (?, ?, ?, ?, '[]', 'pending', ?, ?)",
            (approval.job_id, approval.trigger_id, json_text(envelope), required,
             now, approval.expires_at),
        )  # fmt: skip
        return approval

    async def forget(self, job_id: str) -> None:
        """Drop a held call that was never announced (its notice could not be published)."""
        await self._execute(
            "DELETE FROM approvals WHERE job_id = ? AND state = 'pending'", (job_id,)
        )

    async def approval(self, job_id: str) -> Approval | None:
        """The held call with this job id, or None."""
        rows = await self._fetch("SELECT * FROM approvals WHERE job_id = ?", (job_id,))
        return _approval(rows[0]) if rows else None

    async def approvals_by_prefix(self, prefix: str) -> builtins.list[Approval]:
        """Held calls whose job id starts with `prefix` (hex only: no LIKE wildcards)."""
        if not prefix or not all(c in "0123456789abcdef" for c in prefix):
            return []
        rows = await self._fetch(
            "SELECT * FROM approvals WHERE job_id >= ? AND job_id < ? ORDER BY job_id LIMIT 2",
            (prefix, prefix + "g"),
        )
        return [_approval(r) for r in rows]

    async def list_approvals(
        self, state: ApprovalState | None = "pending", limit: int = 100
    ) -> builtins.list[Approval]:
        """Held calls, newest first."""
        where, params = ("WHERE state = ?", [state]) if state else ("", [])
        rows = await self._fetch(
            f"SELECT * FROM approvals {where} ORDER BY created_at DESC LIMIT ?",  # noqa: S608 - a constant clause
            [*params, limit],
        )
        return [_approval(r) for r in rows]

    async def add_approver(
        self, current: Approval, approver: str, *, decide: bool, now: datetime
    ) -> bool:
        """Record one more approver (and the approval itself when `decide`), only if nobody
        changed the call since `current` was read; False when someone did."""
        approvers = json_text([*current.approvers, approver])
        old = json_text(list(current.approvers))
        if decide:
            sql = (
                "UPDATE approvals SET approvers = ?, state = 'approved', decided_by = ?,"
                " decided_at = ? WHERE job_id = ? AND state = 'pending' AND approvers = ?"
            )
            params: tuple[Any, ...] = (approvers, approver, now, current.job_id, old)
        else:
            sql = (
                "UPDATE approvals SET approvers = ?"
                " WHERE job_id = ? AND state = 'pending' AND approvers = ?"
            )
            params = (approvers, current.job_id, old)
        return await self._execute(sql, params) == 1

    async def close_pending(
        self, job_id: str, state: Literal["rejected", "expired"], *, by: str, reason: str
    ) -> bool:
        """Reject or expire a pending call; False if it was not pending any more."""
        count = await self._execute(
            "UPDATE approvals SET state = ?, decided_by = ?, reason = ?, decided_at = ?"
            " WHERE job_id = ? AND state = 'pending'",
            (state, by, reason[:500], utcnow(), job_id),
        )
        return count == 1

    async def mark_published(self, job_id: str) -> None:
        """The decision's consequence (command or result) is published."""
        await self._execute(
            "UPDATE approvals SET published_at = ? WHERE job_id = ? AND published_at IS NULL",
            (utcnow(), job_id),
        )

    async def due(self, now: datetime, stale: datetime) -> builtins.list[Approval]:
        """Pending calls past their time, and decisions not published since `stale`."""
        rows = await self._fetch(
            "SELECT * FROM approvals WHERE (state = 'pending' AND expires_at <= ?)"
            " OR (state <> 'pending' AND published_at IS NULL AND decided_at <= ?)"
            " ORDER BY created_at LIMIT 100",
            (now, stale),
        )
        return [_approval(r) for r in rows]

    async def use_link(self, nonce: str, job_id: str, used_by: str) -> bool:
        """Spend a single-use approval link; False if it was used already."""
        count = await self._execute(
            "INSERT INTO approval_links (nonce, job_id, used_by, used_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (nonce) DO NOTHING",
            (nonce, job_id, used_by[:200], utcnow()),
        )
        return count == 1

    async def link_key(self) -> bytes:
        """The key approval links are signed with, made by whoever needs it first."""
        fresh = base64.b64encode(secrets.token_bytes(32)).decode()
        await self._execute(
            "INSERT INTO notify_keys (name, value) VALUES ('approval_links', ?)"
            " ON CONFLICT (name) DO NOTHING",
            (fresh,),
        )
        rows = await self._fetch("SELECT value FROM notify_keys WHERE name = 'approval_links'")
        return base64.b64decode(rows[0]["value"])

    # --- digests ---------------------------------------------------------------------

    async def queue_digest(self, delivery: NotificationDelivery) -> None:
        """Keep a delivery for the next digest of its sink."""
        await self._execute(
            "INSERT INTO notify_digest (sink, job_id, delivery, queued_at) VALUES (?, ?, ?, ?)",
            (delivery.sink, delivery.job_id, json_text(delivery), utcnow()),
        )

    async def claim_digest(
        self, sink: str, every: float, now: datetime
    ) -> tuple[str, builtins.list[NotificationDelivery]] | None:
        """Claim a sink's waiting deliveries once the oldest waited `every` seconds.

        A claim older than a few minutes (its notifier died while sending) is taken over:
        that digest is sent again, never lost. None when nothing is due.
        """
        abandoned = now - timedelta(minutes=5)
        free = "(claim IS NULL OR claimed_at < ?)"
        rows = await self._fetch(
            f"SELECT MIN(queued_at) AS oldest FROM notify_digest WHERE sink = ? AND {free}",  # noqa: S608 - a constant clause
            (sink, abandoned),
        )
        oldest = _dt(rows[0]["oldest"]) if rows else None
        if oldest is None or oldest > now - timedelta(seconds=every):
            return None
        claim = secrets.token_hex(8)
        await self._execute(
            f"UPDATE notify_digest SET claim = ?, claimed_at = ? WHERE sink = ? AND {free}",  # noqa: S608 - a constant clause
            (claim, now, sink, abandoned),
        )
        taken = await self._fetch(
            "SELECT delivery FROM notify_digest WHERE claim = ? ORDER BY id", (claim,)
        )
        if not taken:
            return None
        return claim, [_delivery_decoder.decode(r["delivery"]) for r in taken]

    async def settle_digest(self, claim: str, *, sent: bool) -> None:
        """Forget a sent digest's deliveries, or free them for the next try."""
        if sent:
            await self._execute("DELETE FROM notify_digest WHERE claim = ?", (claim,))
        else:
            await self._execute(
                "UPDATE notify_digest SET claim = NULL, claimed_at = NULL WHERE claim = ?",
                (claim,),
            )


def open_notify_store(database: str) -> NotifyStore:
    """The notification store at a `TRIGGERS_DATABASE` URL (connected on first use)."""
    dialect, target = parse_database(database)
    if dialect == "sqlite":
        return NotifyStore(SqliteDriver(target))
    return NotifyStore(PostgresDriver(target, max_size=4))
