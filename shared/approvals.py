"""Approvals: decide a held call once, wherever the decision is made.

The gateway holds a call to a trigger with ``approvals`` (`NotifyStore.hold`); people then
approve or reject it through the CLI, the admin API or a signed link in a notification.
`Decisions` is the one place that turns a decision into its consequence:

- approved by enough distinct people: the original command (same job id) is published;
- rejected, or not approved before its time: a result ``rejected`` / ``expired`` is
  published on ``triggers.results``, so callers, history, tail and notifications see it.

Each state change is a conditional update in the store, so of two gateways deciding at
once exactly one wins and publishes. The consequence is published after the change; a
process that dies in between leaves it unpublished, and `sweep` (run by the notifier)
publishes it later. A command published twice that way is applied once (the worker's
ledger is keyed by job id).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import msgspec
import structlog

from shared.admin import AdminError
from shared.errors import BrokerUnavailable
from shared.jobs import JobRecord, JobStore
from shared.messages import ResultEvent, utcnow
from shared.notify_store import Approval, ApprovalState, NotifyStore
from shared.store import TriggerStore

if TYPE_CHECKING:
    # The type only: the broker client loads with the processes that talk to it.
    from shared.broker import Bus

__all__ = [
    "ApprovalList",
    "ApprovalView",
    "Decisions",
    "LinkClaims",
    "approval_link",
    "approval_view",
    "sign_link",
    "verify_link",
]

log = structlog.get_logger("triggers.approvals")

# A decision whose consequence is still unpublished this long after is finished by `sweep`.
UNPUBLISHED_AFTER = timedelta(seconds=30)
_ATTEMPTS = 10


class ApprovalView(msgspec.Struct, kw_only=True):
    """A held call as the API and ``--json`` show it."""

    job_id: str
    trigger_id: str
    action: str
    cluster: str
    app: str
    service: str | None
    state: ApprovalState
    required: int
    approvers: list[str]
    reason: str | None
    decided_by: str | None
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    published: bool


class ApprovalList(msgspec.Struct, kw_only=True):
    """``GET /v1/approvals``."""

    approvals: list[ApprovalView]


def approval_view(approval: Approval) -> ApprovalView:
    """What may be shown of a held call (never the caller's secret: the command has none)."""
    envelope = approval.envelope
    return ApprovalView(
        job_id=approval.job_id,
        trigger_id=approval.trigger_id,
        action=envelope.action,
        cluster=envelope.target.cluster,
        app=envelope.target.app,
        service=envelope.target.service,
        state=approval.state,
        required=approval.required,
        approvers=list(approval.approvers),
        reason=approval.reason,
        decided_by=approval.decided_by,
        created_at=approval.created_at,
        expires_at=approval.expires_at,
        decided_at=approval.decided_at,
        published=approval.published_at is not None,
    )


class Decisions:
    """Approve, reject and expire held calls, publishing each outcome once."""

    def __init__(
        self,
        store: NotifyStore,
        triggers: TriggerStore,
        bus: Bus,
        jobs: JobStore | None = None,
    ) -> None:
        self.store = store
        self._triggers = triggers
        self._bus = bus
        self._jobs = jobs

    async def resolve(self, job_ref: str) -> Approval:
        """The held call named by a job id or a unique prefix of one (404, 409)."""
        found = await self.store.approvals_by_prefix(job_ref.strip().lower())
        if not found:
            msg = f"no call waiting for approval with job id {job_ref[:40]!r}"
            raise AdminError(404, "approval_not_found", msg)
        if len(found) > 1:
            msg = f"job id prefix {job_ref!r} is ambiguous; give more characters"
            raise AdminError(409, "ambiguous_job_id", msg)
        return found[0]

    async def approve(self, job_ref: str, approver: str) -> ApprovalView:
        """One approval; the last one needed publishes the command (409 when it cannot)."""
        approver = approver.strip()[:200] or "unknown"
        for _ in range(_ATTEMPTS):
            current = await self._pending(job_ref)
            now = utcnow()
            trigger = await self._triggers.get(current.trigger_id)
            state = trigger.state(now) if trigger is not None else "revoked"
            if state != "active":
                msg = (
                    f"trigger {current.trigger_id} is {state}: its calls cannot be approved; "
                    "reject the call or let it expire"
                )
                raise AdminError(409, "trigger_inactive", msg)
            if approver in current.approvers:
                msg = (
                    f"{approver} approved job {current.job_id} already; it needs "
                    f"{current.required} distinct approvers"
                )
                raise AdminError(409, "already_approved", msg)
            decide = len(current.approvers) + 1 >= current.required
            if await self.store.add_approver(current, approver, decide=decide, now=now):
                log.info(
                    "approvals.approved",
                    job_id=current.job_id,
                    approver=approver,
                    decided=decide,
                    approvals=len(current.approvers) + 1,
                    required=current.required,
                )
                if decide:
                    await self._publish_command(current)
                return await self._view(current.job_id)
        msg = "the call is being decided by someone else right now; look at it again"
        raise AdminError(409, "conflict", msg)

    async def reject(self, job_ref: str, by: str, reason: str) -> ApprovalView:
        """Reject a held call: its command is never published; a `rejected` result is."""
        current = await self._pending(job_ref)
        by = by.strip()[:200] or "unknown"
        if not await self._close(current, "rejected", by=by, reason=reason):
            return await self._raise_decided(current.job_id)
        return await self._view(current.job_id)

    async def sweep(self) -> int:
        """Expire calls past their time and publish what a crash left unpublished."""
        now = utcnow()
        done = 0
        for approval in await self.store.due(now, now - UNPUBLISHED_AFTER):
            try:
                if approval.state == "pending":
                    timeout = (approval.expires_at - approval.created_at).total_seconds()
                    reason = f"not approved within {timeout:g} s"
                    done += await self._close(approval, "expired", by="timeout", reason=reason)
                elif approval.state == "approved":
                    await self._publish_command(approval)
                    done += 1
                else:
                    await self._publish_result(approval)
                    done += 1
            except BrokerUnavailable as exc:
                log.warning("approvals.sweep_unpublished", job_id=approval.job_id, error=str(exc))
        return done

    async def _pending(self, job_ref: str) -> Approval:
        current = await self.resolve(job_ref)
        if current.state != "pending":
            await self._raise_decided(current.job_id)
        if utcnow() >= current.expires_at:
            await self._close(current, "expired", by="timeout", reason="approval timed out")
            msg = f"job {current.job_id} waited too long for approval and expired"
            raise AdminError(409, "approval_expired", msg)
        return current

    async def _raise_decided(self, job_id: str) -> ApprovalView:
        latest = await self.store.approval(job_id)
        state = latest.state if latest is not None else "gone"
        by = f" by {latest.decided_by}" if latest is not None and latest.decided_by else ""
        msg = f"job {job_id} is already {state}{by}; nothing to decide"
        raise AdminError(409, "not_pending", msg)

    async def _view(self, job_id: str) -> ApprovalView:
        latest = await self.store.approval(job_id)
        assert latest is not None  # noqa: S101 - approvals are never deleted once decided
        return approval_view(latest)

    async def _close(
        self, current: Approval, state: Literal["rejected", "expired"], *, by: str, reason: str
    ) -> bool:
        if not await self.store.close_pending(current.job_id, state, by=by, reason=reason):
            return False
        log.info("approvals.closed", job_id=current.job_id, state=state, by=by)
        latest = await self.store.approval(current.job_id)
        if latest is not None:
            try:
                await self._publish_result(latest)
            except BrokerUnavailable as exc:
                # Decided all the same: the sweep publishes the result once the broker is back.
                log.warning("approvals.result_unpublished", job_id=current.job_id, error=str(exc))
        return True

    async def _publish_command(self, approval: Approval) -> None:
        # The original envelope and job id; nobody waits on a reply key any more.
        envelope = msgspec.structs.replace(approval.envelope, reply_to=None)
        try:
            await self._bus.publish_command(envelope)
        except BrokerUnavailable as exc:
            log.warning("approvals.command_unpublished", job_id=approval.job_id, error=str(exc))
            return
        await self.store.mark_published(approval.job_id)
        if self._jobs is not None:
            await self._jobs.record(JobRecord.accepted(envelope))

    async def _publish_result(self, approval: Approval) -> None:
        envelope = approval.envelope
        who = approval.decided_by or "unknown"
        error = (
            f"rejected by {who}: {approval.reason or 'no reason given'}"
            if approval.state == "rejected"
            else f"expired: {approval.reason or 'not approved in time'}"
        )
        event = ResultEvent(
            job_id=approval.job_id,
            trigger_id=approval.trigger_id,
            action=envelope.action,
            cluster=envelope.target.cluster,
            app=envelope.target.app,
            service=envelope.target.service,
            status="rejected" if approval.state == "rejected" else "expired",
            error=error,
            detail=f"approvals: {', '.join(approval.approvers) or 'none'} of {approval.required}",
            correlation_id=envelope.correlation_id,
            source=envelope.source,
            issued_at=envelope.issued_at,
        )
        await self._bus.publish_result(event)
        await self.store.mark_published(approval.job_id)


# --- signed, single-use, expiring approval links --------------------------------------


class LinkClaims(msgspec.Struct, frozen=True, kw_only=True):
    """What an approval link says: which call, sent to which sink, until when."""

    job_id: str = msgspec.field(name="j")
    sink: str = msgspec.field(name="s")
    expires: int = msgspec.field(name="e")
    nonce: str = msgspec.field(name="n")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_link(key: bytes, job_id: str, sink: str, expires_at: datetime) -> str:
    """A token for one decision on one held call, valid until `expires_at`."""
    claims = LinkClaims(
        job_id=job_id, sink=sink, expires=int(expires_at.timestamp()), nonce=secrets.token_hex(16)
    )
    payload = _b64(msgspec.json.encode(claims))
    signature = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def verify_link(key: bytes, token: str, now: datetime | None = None) -> LinkClaims:
    """The claims of a genuine, unexpired token; ValueError saying why not otherwise."""
    payload, _, signature = token.partition(".")
    expected = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    if not signature or not hmac.compare_digest(signature, expected):
        msg = "this approval link is not genuine"
        raise ValueError(msg)
    try:
        claims = msgspec.json.decode(_unb64(payload), type=LinkClaims)
    except (binascii.Error, msgspec.DecodeError, msgspec.ValidationError):
        msg = "this approval link is malformed"
        raise ValueError(msg) from None
    if (now or utcnow()) >= datetime.fromtimestamp(claims.expires, UTC):
        msg = "this approval link has expired"
        raise ValueError(msg)
    return claims


def approval_link(public_url: str, token: str) -> str:
    """The page a link opens: it shows the call and asks for a name before deciding."""
    return f"{public_url.rstrip('/')}/approvals/link?token={token}"
