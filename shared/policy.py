"""A trigger's policy: enabled, expiry, replica bounds, cooldown, rate limit, methods.

`PolicyChanges` is what an operator sends (CLI flags or the admin API's JSON body); absent
fields leave the stored value alone, ``null`` clears a limit. `merge_policy` checks the
result as a whole, so ``min_replicas <= max_replicas`` holds however the fields arrive.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shared.errors import PermanentError
from shared.messages import Action
from shared.triggers import HTTP_METHODS, Trigger, TriggerOptions

__all__ = [
    "ALERT_OPTIONS",
    "DEFAULT_APPROVAL_TIMEOUT",
    "POLICY_FIELDS",
    "MaxSeconds",
    "PolicyChanges",
    "PolicyError",
    "merge_options",
    "merge_policy",
]

# A week bounds every duration: longer ones are almost always a unit mistake.
MaxSeconds = Annotated[int, Meta(ge=0, le=7 * 24 * 3600)]
Replicas = Annotated[int, Meta(ge=0, le=10_000)]
CallsPerMinute = Annotated[int, Meta(ge=1, le=60_000)]
ExpiresIn = Annotated[int, Meta(ge=1, le=10 * 365 * 24 * 3600)]
Method = Literal["GET", "POST"]
Step = Annotated[int, Meta(ge=1, le=100)]
AlertCooldown = Annotated[float, Meta(ge=0, le=86_400)]

# The Trigger fields a policy change may set, in one place for the store and the API.
POLICY_FIELDS = (
    "enabled",
    "expires_at",
    "min_replicas",
    "max_replicas",
    "cooldown",
    "rate_limit",
    "allowed_methods",
    "notify",
    "approvals",
    "approval_timeout",
    "request_id_idempotency",
)
# The alert options a change may set: its field here -> the `TriggerOptions` field.
ALERT_OPTIONS = {
    "step": "step",
    "alert_cooldown": "cooldown",
    "scale_in_on_resolve": "scale_in_on_resolve",
}

# How long a held call waits for its approvals when the trigger does not say.
DEFAULT_APPROVAL_TIMEOUT = 3600
SinkName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]


class PolicyError(PermanentError, ValueError):
    """A policy that cannot hold (min above max, bounds on a redeploy trigger, ...)."""


class PolicyChanges(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Policy fields to set; unset ones stay as they are, ``None`` removes a limit."""

    enabled: bool | UnsetType = UNSET
    expires_at: datetime | UnsetType | None = UNSET
    expires_in: ExpiresIn | UnsetType | None = UNSET
    min_replicas: Replicas | UnsetType | None = UNSET
    max_replicas: Replicas | UnsetType | None = UNSET
    cooldown: MaxSeconds | UnsetType | None = UNSET
    rate_limit: CallsPerMinute | UnsetType | None = UNSET
    allowed_methods: Annotated[list[Method], Meta(min_length=1, max_length=2)] | UnsetType = UNSET
    # Alert options (stored with the trigger's options): the scale step of an alert, how
    # long one alert group acts once (null: TRIGGERS_ALERT_COOLDOWN), scale in on resolve.
    step: Step | UnsetType | None = UNSET
    alert_cooldown: AlertCooldown | UnsetType | None = UNSET
    scale_in_on_resolve: bool | UnsetType = UNSET
    # Sinks notified of every result; an empty list notifies none.
    notify: Annotated[list[SinkName], Meta(max_length=20)] | UnsetType = UNSET
    # Distinct approvers a call needs before it runs; None or 0: no approval.
    approvals: Annotated[int, Meta(ge=0, le=10)] | UnsetType | None = UNSET
    # Seconds a held call waits for approval before it expires.
    approval_timeout: Annotated[int, Meta(ge=1, le=7 * 24 * 3600)] | UnsetType | None = UNSET
    # X-Request-ID counts as the call's Idempotency-Key when it sends none.
    request_id_idempotency: bool | UnsetType = UNSET


def _expiry(changes: PolicyChanges, current: datetime | None, now: datetime) -> datetime | None:
    if changes.expires_in is not UNSET and changes.expires_at is not UNSET:
        msg = "give expires_in or expires_at, not both"
        raise PolicyError(msg)
    if changes.expires_in is not UNSET:
        return None if changes.expires_in is None else now + timedelta(seconds=changes.expires_in)
    if changes.expires_at is UNSET:
        return current
    if changes.expires_at is not None:
        if changes.expires_at.tzinfo is None:
            msg = "expires_at needs a time zone, e.g. 2026-12-31T23:59:00Z"
            raise PolicyError(msg)
        if changes.expires_at <= now:
            msg = "expires_at is in the past; give a future time or null for no expiry"
            raise PolicyError(msg)
    return changes.expires_at


def merge_policy(
    action: Action, changes: PolicyChanges, now: datetime, current: Trigger | None = None
) -> dict[str, Any]:
    """The full policy after `changes`, checked as a whole; raises `PolicyError`."""
    merged: dict[str, Any] = {
        "enabled": True,
        "expires_at": None,
        "min_replicas": None,
        "max_replicas": None,
        "cooldown": None,
        "rate_limit": None,
        "allowed_methods": HTTP_METHODS,
        "notify": (),
        "approvals": None,
        "approval_timeout": None,
        "request_id_idempotency": False,
    }
    if current is not None:
        merged = {name: getattr(current, name) for name in POLICY_FIELDS}
    for name in POLICY_FIELDS:
        value = getattr(changes, name)
        if value is not UNSET and name != "expires_at":
            merged[name] = value
    merged["expires_at"] = _expiry(changes, merged["expires_at"], now)
    merged["allowed_methods"] = tuple(m for m in HTTP_METHODS if m in merged["allowed_methods"])
    merged["notify"] = tuple(dict.fromkeys(merged["notify"]))
    if not merged["approvals"]:
        merged["approvals"] = None
    if merged["approval_timeout"] is not None and merged["approvals"] is None:
        msg = "approval_timeout needs approvals (the number of approvers a call waits for)"
        raise PolicyError(msg)
    low, high = merged["min_replicas"], merged["max_replicas"]
    if action != "scale" and (low is not None or high is not None):
        msg = "min_replicas and max_replicas apply to scaling triggers only"
        raise PolicyError(msg)
    if low is not None and high is not None and low > high:
        msg = f"min_replicas ({low}) is above max_replicas ({high})"
        raise PolicyError(msg)
    return merged


def merge_options(
    action: Action, image_update: bool, changes: PolicyChanges, current: TriggerOptions
) -> TriggerOptions:
    """The trigger's options after the alert options in `changes`; raises `PolicyError`."""
    given = {
        option: getattr(changes, name)
        for name, option in ALERT_OPTIONS.items()
        if getattr(changes, name) is not UNSET
    }
    if not given:
        return current
    options = msgspec.structs.replace(current, **given)
    try:
        options.check(action, image_update)
    except ValueError as exc:
        raise PolicyError(str(exc)) from None
    return options
