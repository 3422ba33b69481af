"""``GET|POST /hook/trigger``: authenticate, validate, publish, answer.

Order matters: the call's shape is checked first (400), then the trigger and secret (403,
the same answer for an unknown trigger, a revoked one, a mismatched `triggerUrl` and a
wrong secret; during a rotation's grace period the previous secret counts too), then
signatures and a registry or alert body (`gateway.sources`: 401, 409, 422, or 200
"ignored"), then the parameters the trigger's action needs (400), then the trigger's
policy (`gateway.policy`: 403/405/429, or 200 "ignored" within a cooldown). Only then is
a command published, and 202 is answered only after the broker confirmed it.

The secret is checked from the query string or headers before the body is read. A call's
keys (an ``Idempotency-Key``, a signature, a body's de-duplication keys: `gateway.recent`,
shared by the gateways through Redis when ``TRIGGERS_REDIS_URL`` is set) are claimed
before the policy and settled on every path (`gateway.claims`): confirmed with the job id
after the broker's confirm, released when nothing was sent, and kept as "unconfirmed"
when the broker may have the command, so that a retry publishes the same job id.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Literal

import msgspec
from aiohttp import ClientConnectionError, web

from gateway.claims import CallClaims
from gateway.client import client_address
from gateway.errors import ApiError
from gateway.jobs import parse_wait, run_job, same_job
from gateway.keys import (
    AUTH_LIMITER,
    AUTHENTICATED,
    BUS,
    LOG_FIELDS,
    RECENT_EVENTS,
    SETTINGS,
    TRIGGER_CACHE,
    WAITER,
)
from gateway.notify import hold_call
from gateway.policy import Admission, admit
from gateway.sources import EventCall, inspect_call, presented_secret
from shared.messages import (
    Command,
    CommandEnvelope,
    Redeploy,
    Scale,
    Source,
    Target,
    new_job_id,
    utcnow,
)
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
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
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


Direction = Literal["scale_in", "scale_out"]


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


def _scale_command(query: dict[str, list[str]]) -> Scale:
    direction, step = _scale_parameters(query)
    if direction is None:
        raise _bad("missing_type", "a scaling trigger needs type=scale_in or type=scale_out")
    if step is None:
        raise _bad("missing_step", "a scaling trigger needs step=N, a whole number from 1 to 100")
    return Scale(direction=direction, step=step)


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


def _correlation_id(request: web.Request, job_id: str) -> str:
    given = request.headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.fullmatch(given) else job_id


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


def _command(trigger: Trigger, query: dict[str, list[str]], event: EventCall | None) -> Command:
    if event is not None:
        command = event.command
    elif trigger.action == "scale":
        command = _scale_command(query)
    else:
        command = Redeploy()
    if isinstance(command, Scale):
        # The worker clamps to the bounds against the live replica count.
        command = msgspec.structs.replace(
            command, min_replicas=trigger.min_replicas, max_replicas=trigger.max_replicas
        )
    return command


async def _admit(
    request: web.Request, trigger: Trigger, event: EventCall | None, claims: CallClaims
) -> Admission:
    """The trigger's policy; a retry of a job already sent does not claim the cooldown again."""
    admission = await admit(
        request,
        trigger,
        utcnow(),
        sender=event.origin.source if event else None,
        cooldown=claims.retry_of is None,
    )
    if admission.ignored is None and claims.retry_of is None:
        claims.release_cooldown = admission.release
    return admission


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


async def _claim_idempotency_key(
    request: web.Request, trigger: Trigger, claims: CallClaims
) -> web.Response | None:
    """Claim the caller's key; the same job's answer when the key was used before."""
    key = _idempotency_key(request, trigger)
    if key is None:
        return None
    digest = hashlib.sha256(key.encode()).hexdigest()
    window = request.app[SETTINGS].idempotency_window
    earlier = await claims.claim(f"idempotency:{trigger.id}:{digest}", window)
    if earlier is None or earlier.unconfirmed:
        return None
    if earlier.pending or earlier.job_id is None:
        raise ApiError(
            409,
            "idempotency_key_in_use",
            "a call with this Idempotency-Key is still in progress; retry in a moment",
            headers={"Retry-After": "1"},
        )
    request[LOG_FIELDS].update(job_id=earlier.job_id, outcome="replayed")
    return await same_job(request, earlier.job_id, trigger.id)


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
    # Every claim made from here on is settled on every path (`gateway.claims`).
    claims = CallClaims(request.app[RECENT_EVENTS])
    try:
        response = await _run(
            request, trigger, query, body, claims=claims, secret_in_query=secret_in_query
        )
    except BaseException as exc:
        refused = isinstance(exc, ApiError) and exc.status < 500
        await claims.not_published(refused=refused)
        raise
    await claims.not_published(refused=True)  # an answer without a publish: held back
    return response


async def _run(
    request: web.Request,
    trigger: Trigger,
    query: dict[str, list[str]],
    body: bytes,
    *,
    claims: CallClaims,
    secret_in_query: bool,
) -> web.Response:
    wait_s = parse_wait(_single(query, "wait"), request.app[SETTINGS])
    direction, step = _call_parameters(trigger, query)
    same = await _claim_idempotency_key(request, trigger, claims)
    if same is not None:
        return same
    event = await inspect_call(
        request,
        trigger,
        body,
        source=_single(query, "source"),
        direction=direction,
        step=step,
        secret_in_query=secret_in_query,
        claims=claims,
    )
    if isinstance(event, web.Response):
        return event  # a valid event this trigger does not act on
    command = _command(trigger, query, event)
    admission = await _admit(request, trigger, event, claims)
    if admission.ignored is not None:
        return admission.ignored

    job_id = claims.job_id(new_job_id)
    envelope = CommandEnvelope(
        job_id=job_id,
        trigger_id=trigger.id,
        target=Target(
            cluster=trigger.cluster,
            app=trigger.app,
            service=trigger.service,
            namespace=trigger.namespace,
        ),
        command=command,
        source=Source(
            kind="http",
            remote=client_address(request),
            user_agent=request.headers.get("User-Agent", "")[:200] or None,
            method=request.method,
            origin=event.origin if event else None,
        ),
        correlation_id=_correlation_id(request, job_id),
        reply_to=request.app[WAITER].reply_to if wait_s > 0 else None,
    )
    request[LOG_FIELDS]["job_id"] = job_id
    if claims.retry_of is not None:
        request[LOG_FIELDS]["retry_of"] = claims.retry_of

    async def publish() -> None:
        try:
            await request.app[BUS].publish_command(envelope)
        except BaseException:
            # Maybe persisted (a lost confirm looks like any other failure): a retry with
            # the same keys publishes the same job id, which runs at most once.
            await claims.maybe_published(job_id)
            raise
        await claims.published(job_id)
        if event:
            await event.published(job_id)

    answer: dict[str, object] = {
        "job_id": job_id,
        "status": "accepted",
        "trigger_id": trigger.id,
        "action": trigger.action,
        "cluster": trigger.cluster,
        "app": trigger.app,
        "service": trigger.service,
        "correlation_id": envelope.correlation_id,
        "issued_at": envelope.issued_at.isoformat(),
    }
    if isinstance(command, Scale):
        answer["type"] = command.direction
        answer["step"] = command.step
    if event:
        answer["event"] = event.summary
    if trigger.approvals:
        # Held for approval (gateway/notify.py): nothing is published until people approve.
        return await hold_call(request, trigger, envelope, answer, event=event, claims=claims)
    # With wait=N, the job's result within N seconds instead of the 202 (gateway/jobs.py).
    return await run_job(request, envelope, answer, publish, wait=wait_s)
