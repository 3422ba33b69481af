"""Bodies of the admin HTTP API, as msgspec Structs.

The server decodes requests and encodes answers with these, the OpenAPI document is
generated from them, and the CLI prints the same objects with ``--json``, so the three
cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shared.audit import AuditEntry
from shared.messages import Action
from shared.policy import MaxSeconds, PolicyChanges
from shared.triggers import (
    NAME_PATTERN,
    NAMESPACE_PATTERN,
    Trigger,
    TriggerOptions,
    TriggerState,
    encode_trigger_url,
)

__all__ = [
    "DEFAULT_GRACE",
    "AuditList",
    "DeadMessage",
    "DlqPurged",
    "DlqReplay",
    "ErrorBody",
    "RotateRequest",
    "TriggerCreate",
    "TriggerList",
    "TriggerView",
    "created_view",
    "trigger_view",
]

# Seconds the previous secret keeps working after a rotation, unless the operator says.
DEFAULT_GRACE = 300

Name = Annotated[str, Meta(pattern=NAME_PATTERN.pattern, max_length=63)]
Namespace = Annotated[str, Meta(pattern=NAMESPACE_PATTERN.pattern, max_length=63)]


class TriggerCreate(PolicyChanges, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/triggers``: what to create, with an optional policy."""

    cluster: Name
    app: Name
    action: Action
    service: Name | None = None
    image_update: bool = False
    namespace: Namespace | None = None
    # Registry and alert options (image binding, tag filter, alert step, signatures).
    options: TriggerOptions | None = None


class RotateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/triggers/{id}/rotate``: how long the old secret keeps working."""

    grace: MaxSeconds = DEFAULT_GRACE


class TriggerView(msgspec.Struct, kw_only=True):
    """A trigger as the API and ``--json`` show it; `url` and `secret` only when new."""

    id: str
    cluster: str
    app: str
    action: Action
    service: str | None
    image_update: bool
    namespace: str | None
    # The registry and alert options that differ from the defaults (image, tags, semver,
    # step, alert_cooldown, scale_in_on_resolve, signature, header_secret_only); never the
    # signing key.
    options: dict[str, Any]
    trigger_url: str
    status: TriggerState
    enabled: bool
    expires_at: datetime | None
    min_replicas: int | None
    max_replicas: int | None
    cooldown: int | None
    rate_limit: int | None
    allowed_methods: list[Literal["GET", "POST"]]
    created_at: datetime
    updated_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None
    previous_secret_expires_at: datetime | None
    # Notifications and approvals: the sinks notified, approvers a call needs, and seconds
    # a held call waits for them.
    notify: list[str] = msgspec.field(default_factory=list)
    approvals: int | None = None
    approval_timeout: int | None = None
    # X-Request-ID serves as the Idempotency-Key when a call sends none.
    request_id_idempotency: bool = False
    url: str | UnsetType = UNSET
    secret: str | UnsetType = UNSET
    signing_secret: str | UnsetType = UNSET


class TriggerList(msgspec.Struct, kw_only=True):
    """``GET /v1/triggers``; `next_offset` is null on the last page."""

    triggers: list[TriggerView]
    next_offset: int | None


class AuditList(msgspec.Struct, kw_only=True):
    """``GET /v1/audit``; pass `next_before` as `before` for the next (older) page."""

    entries: list[AuditEntry]
    next_before: int | None


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error answer."""

    error: str
    detail: str


def trigger_view(
    trigger: Trigger, now: datetime, *, url: str | None = None, secret: str | None = None
) -> TriggerView:
    """The view of a trigger at `now`; `url` and `secret` (and a signing key) only at
    creation, `url` and `secret` at a rotation."""
    methods: list[Literal["GET", "POST"]] = [
        "GET" if m == "GET" else "POST" for m in trigger.allowed_methods
    ]
    return TriggerView(
        id=trigger.id,
        cluster=trigger.cluster,
        app=trigger.app,
        action=trigger.action,
        service=trigger.service,
        image_update=trigger.image_update,
        namespace=trigger.namespace,
        options={
            # The alert cooldown is not the policy's cooldown: named as its flag is.
            ("alert_cooldown" if k == "cooldown" else k): v
            for k, v in msgspec.structs.asdict(trigger.options).items()
            if k != "signing_secret" and v not in (None, False)
        },
        trigger_url=encode_trigger_url(trigger.cluster, trigger.app, trigger.action, trigger.id),
        status=trigger.state(now),
        enabled=trigger.enabled,
        expires_at=trigger.expires_at,
        min_replicas=trigger.min_replicas,
        max_replicas=trigger.max_replicas,
        cooldown=trigger.cooldown,
        rate_limit=trigger.rate_limit,
        allowed_methods=methods,
        created_at=trigger.created_at,
        updated_at=trigger.updated_at,
        revoked_at=trigger.revoked_at,
        rotated_at=trigger.rotated_at,
        previous_secret_expires_at=(
            trigger.previous_secret_expires_at
            if trigger.previous_secret_expires_at and trigger.previous_secret_expires_at > now
            else None
        ),
        notify=list(trigger.notify),
        approvals=trigger.approvals,
        approval_timeout=trigger.approval_timeout,
        request_id_idempotency=trigger.request_id_idempotency,
        url=url if url is not None else UNSET,
        secret=secret if secret is not None else UNSET,
    )


def created_view(trigger: Trigger, now: datetime, *, url: str, secret: str) -> TriggerView:
    """The view `create` answers: the secret and, for a signed trigger, its signing key."""
    view = trigger_view(trigger, now, url=url, secret=secret)
    if trigger.options.signing_secret:
        view.signing_secret = trigger.options.signing_secret
    return view


class DeadMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One dead-lettered message, as ``GET /v1/dlq`` and `triggers dlq list` show it."""

    id: str
    reason: str
    queue: str | None
    died_at: str | None
    attempts: int | None
    action: str | None
    cluster: str | None
    app: str | None
    service: str | None
    replayable: bool
    size: int


class DlqReplay(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/dlq/replay``: message ids (from ``GET /v1/dlq``), or ``all``."""

    ids: list[str] | None = None
    all: bool = False


class DlqPurged(msgspec.Struct, kw_only=True):
    """``DELETE /v1/dlq``: how many dead messages were dropped."""

    purged: int
