"""A trigger's policy, checked for each authenticated call, in this order:

1. disabled -> 403 ``trigger_disabled``; expired -> 403 ``trigger_expired``;
2. a method the trigger does not allow -> 405 with ``Allow``;
3. over its rate limit -> 429 with ``Retry-After`` (every authenticated call counts);
4. within its cooldown -> `Ignored` (200 ``{"status": "ignored", "reason": "cooldown"}``): nothing is
   published. A 200 rather than an error, because the caller did nothing wrong and a
   monitoring system retrying a 4xx/5xx would only prolong an alert storm.

Replica bounds are not checked here: the gateway does not know the live replica count.
They travel in the `Scale` command and the worker clamps to them.

Senders that retry every non-2xx answer until it succeeds (the Docker Registry, which
also holds back its later events for that endpoint meanwhile, and Pub/Sub push, for up to
the subscription's retention) get 200 ``{"status": "ignored", "reason":
"trigger_disabled"|"trigger_expired"|"rate_limited"}`` instead of 1. and 3.: the event is
dropped, visibly (log line, audit trail), rather than replayed hours later when the
trigger is enabled again or stalling the registry's queue. Every other sender and a plain
call get the 403/429, which their delivery logs show.
"""

from __future__ import annotations

import math
from datetime import datetime

from gateway.abuse import FailedAuthLimiter
from gateway.errors import ApiError
from gateway.limits import CallLimits
from gateway.outcomes import Ignored
from shared.triggers import Trigger

__all__ = ["RETRYING_SENDERS", "admit"]

# Event sources (`gateway.sources`) whose sender retries every error answer forever.
RETRYING_SENDERS = frozenset({"distribution", "gar"})
_DROPPED = frozenset({"trigger_disabled", "trigger_expired", "rate_limited"})


def _check_state(trigger: Trigger, now: datetime) -> None:
    state = trigger.state(now)
    if state == "disabled":
        raise ApiError(
            403,
            "trigger_disabled",
            f"trigger {trigger.id} is disabled; enable it with `triggers update {trigger.id} --enable`",
        )
    if state == "expired" and trigger.expires_at is not None:
        raise ApiError(
            403,
            "trigger_expired",
            f"trigger {trigger.id} expired at {trigger.expires_at.isoformat()}; extend it with "
            f"`triggers update {trigger.id} --expires-in SECONDS` or create a new one",
        )


async def admit(
    trigger: Trigger,
    now: datetime,
    *,
    method: str,
    limits: CallLimits,
    sender: str | None = None,
    cooldown: bool = True,
) -> Ignored | None:
    """Check the policy for this call: None to go ahead (the cooldown, if any, is then
    claimed), `Ignored` to do nothing; raises `ApiError` for a violation.

    `sender` is the event source of the call's body, if any: a sender in
    `RETRYING_SENDERS` is answered 200 "ignored" where others get 403/429.
    ``cooldown=False`` for the retry of a job already sent: it started the cooldown itself.
    """
    try:
        return await _admit(trigger, now, method=method, limits=limits, cooldown=cooldown)
    except ApiError as exc:
        if sender not in RETRYING_SENDERS or exc.code not in _DROPPED:
            raise
        detail = (
            f"{exc.detail}; the event is dropped (answered 200, so that the sender, which "
            "retries every error, neither replays it later nor holds back its next events)"
        )
        return Ignored(exc.code, detail, trigger_id=trigger.id)


async def _admit(
    trigger: Trigger, now: datetime, *, method: str, limits: CallLimits, cooldown: bool
) -> Ignored | None:
    _check_state(trigger, now)
    if method not in trigger.allowed_methods:
        allowed = ", ".join(trigger.allowed_methods)
        raise ApiError(
            405,
            "method_not_allowed",
            f"trigger {trigger.id} accepts {allowed} only",
            headers={"Allow": allowed},
        )
    if trigger.rate_limit:
        wait = await limits.take_rate(trigger.id, trigger.rate_limit)
        if wait is not None:
            retry_after = FailedAuthLimiter.retry_after(wait)
            raise ApiError(
                429,
                "rate_limited",
                f"trigger {trigger.id} allows {trigger.rate_limit} calls per minute; "
                f"retry after {retry_after} s",
                headers={"Retry-After": retry_after},
            )
    if trigger.cooldown and cooldown:
        remaining = await limits.claim_cooldown(trigger.id, trigger.cooldown)
        if remaining is not None:
            detail = (
                f"trigger {trigger.id} ran less than {trigger.cooldown} s ago; "
                f"nothing was done (cooldown ends in {math.ceil(remaining)} s)"
            )
            return Ignored(
                "cooldown", detail, trigger_id=trigger.id, cooldown_remaining=math.ceil(remaining)
            )
    return None
