"""``GET|POST /hook/trigger``: read the call, hand it to the pipeline, answer its outcome.

Order matters: the call's shape is checked first (400), then the trigger and secret (403,
the same answer for an unknown trigger, a revoked one, a mismatched `triggerUrl` and a
wrong secret; during a rotation's grace period the previous secret counts too), then the
call's parameters (400). The secret is checked from the query string or headers before
the body is read.

`gateway.calls` then decides with no HTTP in it: signatures and a registry or alert body
(401, 409, 422, or 200 "ignored"), the parameters the trigger's action needs (400), the
trigger's policy (403/405/429, or 200 "ignored" within a cooldown), and only then the
publish: 202 is answered only after the broker confirmed the command. Its keys and the
cooldown are held by one reservation (`gateway.claims`), settled on every path.

This module is the one place that turns an outcome (`gateway.outcomes`) into an HTTP
answer and fills the request's log fields; it leaves the outcome on the request
(`gateway.keys.OUTCOME`) for the audit and metrics middlewares.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
from aiohttp import ClientConnectionError, web

from gateway.calls import Call, Services, run_call
from gateway.client import client_address
from gateway.errors import ApiError, json_response
from gateway.jobs import job_status, parse_wait, public_job, safe_error, status_url
from gateway.keys import (
    ACCEPTED,
    AUTH_LIMITER,
    AUTHENTICATED,
    BUS,
    JOBS,
    LIMITS,
    LOG_FIELDS,
    OUTCOME,
    RECENT_EVENTS,
    SETTINGS,
    TRIGGER_CACHE,
    WAITER,
)
from gateway.notify import NOTIFY
from gateway.outcomes import Accepted, CallOutcome, Held, Ignored, Progress, Refused, Replayed
from gateway.sources import presented_secret
from shared.jobs import JobRecord
from shared.messages import Direction, Scale, utcnow
from shared.triggers import (
    Trigger,
    TriggerRef,
    TriggerUrlError,
    decode_trigger_url,
    looks_like_secret,
)

__all__ = ["ALLOWED_PARAMETERS", "handle_trigger"]

ALLOWED_PARAMETERS = ("triggerUrl", "secret", "type", "step", "source", "wait")
_STEP = re.compile(r"^[0-9]{1,3}$")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_FORBIDDEN = ApiError(
    403,
    "forbidden",
    "unknown or revoked trigger, or wrong secret; check the URL printed by `triggers create`",
)


def _bad(code: str, detail: str) -> ApiError:
    return ApiError(400, code, detail)


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if values is None:
        return None
    if len(values) > 1:
        raise _bad("duplicate_parameter", f"{name} is given {len(values)} times; give it once")
    return values[0]


def _query(request: web.Request) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for key, value in request.query.items():
        query.setdefault(key, []).append(value)
    unknown = sorted(set(query) - set(ALLOWED_PARAMETERS))
    if unknown:
        shown = ", ".join(repr(u[:32]) for u in unknown[:5])
        raise _bad(
            "unknown_parameter",
            f"unknown parameter {shown}; a trigger call takes {', '.join(ALLOWED_PARAMETERS)}",
        )
    return query


def _scale_parameters(query: dict[str, list[str]]) -> tuple[Direction | None, int | None]:
    """`type` and `step` when given, validated; an alert body makes both optional."""
    direction = _single(query, "type")
    step_text = _single(query, "step")
    if direction is not None and direction not in ("scale_in", "scale_out"):
        raise _bad("invalid_type", f"type must be scale_in or scale_out, got {direction[:32]!r}")
    step: int | None = None
    if step_text is not None:
        step = int(step_text) if _STEP.fullmatch(step_text) else 0
        if not 1 <= step <= 100:
            raise _bad(
                "invalid_step", f"step must be a whole number from 1 to 100, got {step_text[:32]!r}"
            )
    if direction is None:
        return None, step
    return ("scale_in" if direction == "scale_in" else "scale_out"), step


# Compared against when no trigger was found, so that an unknown id takes as long to
# refuse as a live one with a wrong secret (the timing says nothing about which it was).
_ABSENT = Trigger(
    id="absent",
    cluster="-",
    app="-",
    action="redeploy",
    secret_hash="0" * 64,
    previous_secret_hash="0" * 64,
    created_at=utcnow(),
)


def _authentic(trigger: Trigger | None, ref: TriggerRef, secret: str) -> bool:
    now = utcnow()
    if trigger is None:
        _ABSENT.accepts_secret(secret, now)
        return False
    return (
        trigger.accepts_secret(secret, now)
        and not trigger.revoked
        and (trigger.cluster, trigger.app, trigger.action) == (ref.cluster, ref.app, ref.action)
    )


async def _verified(
    request: web.Request, ref: TriggerRef, secret: str, *, may_refresh: bool
) -> Trigger | None:
    if not looks_like_secret(secret):
        return None
    cache = request.app[TRIGGER_CACHE]
    trigger = await cache.get(ref.trigger_id)
    if not _authentic(trigger, ref, secret) and may_refresh:
        # The cached copy may predate a rotation or a creation made elsewhere whose
        # change notice has not arrived yet: read once more (at most every so often).
        trigger = await cache.refreshed(ref.trigger_id)
    return trigger if _authentic(trigger, ref, secret) else None


async def _authenticate(request: web.Request, ref: TriggerRef, secret: str) -> Trigger:
    """The trigger when the secret is right; else 403, or 429 past the failure limit.

    Failures are counted per address and trigger, and only a wrong secret is refused.
    """
    limiter = request.app[AUTH_LIMITER]
    key = f"{client_address(request)} {ref.trigger_id}"
    trigger = await _verified(request, ref, secret, may_refresh=not limiter.blocked_for(key))
    if trigger is not None:
        return trigger
    if wait := limiter.failed(key):
        raise ApiError(
            429,
            "too_many_failed_attempts",
            "too many calls with a wrong secret for this trigger from this address; wait and retry",
            headers={"Retry-After": limiter.retry_after(wait)},
        )
    raise _FORBIDDEN


def _check_length(request: web.Request) -> None:
    # A declared oversize body is refused with 413 before anything is read.
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"the body is limited to {limit} bytes")


async def _read_body(request: web.Request) -> bytes:
    """The body, read after authentication and within the body timeout (408 after it)."""
    if request.method != "POST" or not request.can_read_body:
        return b""
    timeout = request.app[SETTINGS].body_timeout
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"the body did not arrive within {timeout:g} s"
        ) from None
    except (ConnectionError, ClientConnectionError, web.RequestPayloadError):
        # The caller went away mid-body: nothing to answer, nothing to log but the line.
        raise ApiError(
            400, "incomplete_body", "the connection closed before the body ended"
        ) from None


def _call_parameters(
    trigger: Trigger, query: dict[str, list[str]]
) -> tuple[Direction | None, int | None]:
    if trigger.action == "scale":
        return _scale_parameters(query)
    if "type" in query or "step" in query:
        raise _bad(
            "unexpected_parameter",
            "type and step apply to scaling triggers only; this trigger redeploys",
        )
    return None, None


def _idempotency_key(request: web.Request, trigger: Trigger) -> str | None:
    """The call's ``Idempotency-Key``, or its ``X-Request-ID`` when the trigger says so."""
    header = "Idempotency-Key"
    key = request.headers.get(header)
    if key is None and trigger.request_id_idempotency:
        header = "X-Request-ID"
        key = request.headers.get(header)
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        # Refused rather than ignored: a retry the caller believes safe must not run twice.
        raise _bad(
            "invalid_idempotency_key",
            f"{header} must be 1 to 255 printable ASCII characters (a UUID is a good one)",
        )
    return key


async def handle_trigger(request: web.Request) -> web.Response:
    """Run a trigger: 202 with the job id once the broker confirmed the command."""
    _check_length(request)
    query = _query(request)
    token = _single(query, "triggerUrl")
    # A header keeps the secret out of URLs and access logs; it wins over the query.
    secret, secret_in_query = presented_secret(request.headers, _single(query, "secret"))
    if not token:
        raise _bad(
            "missing_trigger_url", "triggerUrl is required: call the URL `triggers create` printed"
        )
    try:
        ref = decode_trigger_url(token)
    except TriggerUrlError as exc:
        raise _bad("invalid_trigger_url", str(exc)) from None
    if not secret:
        raise _bad(
            "missing_secret",
            "secret is required: call the full URL `triggers create` printed, "
            "or send it as X-Trigger-Secret or Authorization: Bearer",
        )
    request[LOG_FIELDS] = {"trigger_id": ref.trigger_id}

    trigger = await _authenticate(request, ref, secret)
    # From here on every answer (ignored, refused, accepted) is counted under its action.
    request[LOG_FIELDS]["action"] = trigger.action
    request[AUTHENTICATED] = True
    body = await _read_body(request)
    call = _call(request, trigger, query, body, secret_in_query=secret_in_query)
    progress = Progress()
    try:
        outcome = await run_call(call, _services(request.app), progress)
    finally:
        _note_progress(request[LOG_FIELDS], progress)
    request[OUTCOME] = outcome
    return await _answer(request, trigger, outcome)


def _call(
    request: web.Request,
    trigger: Trigger,
    query: dict[str, list[str]],
    body: bytes,
    *,
    secret_in_query: bool,
) -> Call:
    """The call's parameters, checked in the order the answers promise (400s)."""
    wait = parse_wait(_single(query, "wait"), request.app[SETTINGS])
    direction, step = _call_parameters(trigger, query)
    idempotency_key = _idempotency_key(request, trigger)
    return Call(
        trigger=trigger,
        method=request.method,
        headers=request.headers,
        body=body,
        remote=client_address(request),
        source=_single(query, "source"),
        direction=direction,
        step=step,
        wait=wait,
        idempotency_key=idempotency_key,
        secret_in_query=secret_in_query,
    )


def _services(app: web.Application) -> Services:
    return Services(
        settings=app[SETTINGS],
        bus=app[BUS],
        recent=app[RECENT_EVENTS],
        limits=app[LIMITS],
        jobs=app[JOBS],
        accepted=app[ACCEPTED],
        waiter=app[WAITER],
        holds=app[NOTIFY],
    )


def _note_progress(fields: dict[str, str], progress: Progress) -> None:
    """The log line says what was known of the call, even when it failed after that."""
    fields.update({name: value for name, value in vars(progress).items() if value is not None})


# --- the HTTP answer to each outcome ----------------------------------------------------


async def _answer(request: web.Request, trigger: Trigger, outcome: CallOutcome) -> web.Response:
    fields = request[LOG_FIELDS]
    match outcome:
        case Refused(error=error):
            raise error
        case Ignored():
            fields.update(outcome="ignored", reason=outcome.reason, detail=outcome.detail)
            return json_response(_ignored_body(outcome), status=200)
        case Replayed(job_id=job_id):
            fields.update(job_id=job_id, outcome="replayed")
            return await _replayed(request, trigger, job_id)
        case Held():
            fields.update(job_id=outcome.job_id, outcome="pending_approval")
            return _held(request, trigger, outcome)
        case Accepted(wait=wait):
            fields["outcome"] = outcome.label
            if outcome.recorded:
                fields["result_from"] = "history"
            if wait > 0:
                return await _waited(request, trigger, outcome)
            return _accepted(request, trigger, outcome)


def _ignored_body(outcome: Ignored) -> dict[str, object]:
    """200 ``{"status": "ignored", "reason": code, "detail": text}``: nothing was done."""
    body: dict[str, object] = {
        "status": "ignored",
        "reason": outcome.reason,
        "detail": outcome.detail,
        "job_id": outcome.job_id,  # the earlier job an event repeats
        "trigger_id": outcome.trigger_id,  # the policy's answers name the trigger
        "cooldown_remaining": outcome.cooldown_remaining,
    }
    return {name: value for name, value in body.items() if value is not None}


async def _replayed(request: web.Request, trigger: Trigger, job_id: str) -> web.Response:
    """The answer to a call whose Idempotency-Key was used before: that job, as it is now."""
    url = status_url(request.app[SETTINGS], job_id)
    body: dict[str, Any] = {
        "job_id": job_id,
        "status": await job_status(request, job_id),
        "trigger_id": trigger.id,
        "status_url": url,
        "idempotent_replay": True,
    }
    headers = {"Location": url, "Idempotent-Replayed": "true"}
    return json_response(body, status=202, headers=headers)


def _call_body(trigger: Trigger, outcome: Accepted | Held) -> dict[str, Any]:
    """What an accepted or held call says of its job."""
    envelope = outcome.envelope
    body: dict[str, Any] = {
        "job_id": outcome.job_id,
        "status": "accepted",
        "trigger_id": trigger.id,
        "action": trigger.action,
        "cluster": trigger.cluster,
        "app": trigger.app,
        "service": trigger.service,
        "correlation_id": envelope.correlation_id,
        "issued_at": envelope.issued_at.isoformat(),
    }
    if isinstance(envelope.command, Scale):
        body["type"] = envelope.command.direction
        body["step"] = envelope.command.step
    if outcome.event is not None:
        body["event"] = outcome.event
    return body


def _job_headers(outcome: Accepted | Held, url: str) -> dict[str, str]:
    return {"X-Request-ID": outcome.envelope.correlation_id, "Location": url}


def _held(request: web.Request, trigger: Trigger, outcome: Held) -> web.Response:
    """202 ``pending_approval``: kept until people approve (`gateway.notify`)."""
    url = status_url(request.app[SETTINGS], outcome.job_id)
    body = _call_body(trigger, outcome)
    body.update(
        status="pending_approval",
        approvals_required=outcome.approvals_required,
        expires_at=outcome.expires_at.isoformat(),
        status_url=url,
    )
    return json_response(body, status=202, headers=_job_headers(outcome, url))


def _accepted(request: web.Request, trigger: Trigger, outcome: Accepted) -> web.Response:
    """202 with the job id and where to poll it."""
    url = status_url(request.app[SETTINGS], outcome.job_id)
    body = _call_body(trigger, outcome)
    body["status_url"] = url
    return json_response(body, status=202, headers=_job_headers(outcome, url))


async def _waited(request: web.Request, trigger: Trigger, outcome: Accepted) -> web.Response:
    """A call with wait=N: 200 with the job when it succeeded or was skipped, 422
    ``job_failed`` when it failed (not 502: ``curl --retry`` would run it again), 202 with
    ``status_url`` when N seconds passed first (`gateway.jobs`)."""
    settings = request.app[SETTINGS]
    url = status_url(settings, outcome.job_id)
    headers = _job_headers(outcome, url)
    event = outcome.result
    if event is None:
        # One read, to say whether a worker has started it; the caller polls status_url next.
        body = _call_body(trigger, outcome)
        body["status_url"] = url
        body["status"] = await job_status(request, outcome.job_id)
        body["waited"] = outcome.wait
        body["detail"] = (
            f"no result within {outcome.wait:g} s; the job goes on: "
            "poll status_url or watch `triggers tail`"
        )
        return json_response(body, status=202, headers=headers)
    finished = msgspec.structs.replace(
        JobRecord.from_event(event), accepted_at=outcome.record.accepted_at
    )
    job = public_job(finished, settings)
    if outcome.event is not None:
        job["event"] = outcome.event  # what a registry push or an alert was recognised as
    if event.status == "failed":
        job = {"error": "job_failed", "detail": safe_error(event.error) or "the job failed", **job}
        return json_response(job, status=422, headers=headers)
    return json_response(job, status=200, headers=headers)
