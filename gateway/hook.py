"""``GET|POST /hook/trigger``: authenticate, validate, publish, answer.

Order matters: the call's shape is checked first (400), then the trigger and secret (403,
the same answer for an unknown trigger, a revoked one, a mismatched `triggerUrl` and a
wrong secret; during a rotation's grace period the previous secret counts too), then
signatures and a registry or alert body (`gateway.sources`: 401, 409, 422, or 200
"ignored"), then the parameters the trigger's action needs (400), then the trigger's
policy (`gateway.policy`: 403/405/429, or 200 "ignored" within a cooldown). Only then is
a command published, and 202 is answered only after the broker confirmed it.

A body's de-duplication keys (`gateway.recent`: shared by the gateways through Redis when
``TRIGGERS_REDIS_URL`` is set) are claimed while it is read, before the policy; they are
confirmed with the job id after the broker's confirm, and released when the policy holds
the call back or publishing fails, so that a retry acts.
"""

from __future__ import annotations

import asyncio
import re
from typing import Literal

import msgspec
from aiohttp import web

from gateway.client import client_address
from gateway.errors import ApiError
from gateway.jobs import parse_wait, run_job
from gateway.keys import (
    AUTH_LIMITER,
    BUS,
    LOG_FIELDS,
    SETTINGS,
    STORE,
    TRIGGER_CACHE,
    TRIGGER_LOOKUPS,
    WAITER,
)
from gateway.notify import hold_call
from gateway.policy import Admission, admit
from gateway.sources import EventCall, inspect_call, presented_secret
from shared.errors import BrokerUnavailable
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
        step = int(step_text) if _STEP.match(step_text) else 0
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


async def _lookup(request: web.Request, trigger_id: str, *, fresh: bool = False) -> Trigger | None:
    # A short cache keeps the store off the hot path; its TTL bounds how long a revoked
    # trigger keeps working on this gateway. When an entry expires under load, one lookup
    # goes to the store and the calls arriving meanwhile wait for it (single flight).
    cache = request.app[TRIGGER_CACHE]
    if fresh:
        # A fresh read must start now (after a rotation), not join one already on its way.
        trigger = await request.app[STORE].get(trigger_id)
        cache[trigger_id] = trigger
        return trigger
    try:
        return cache[trigger_id]
    except KeyError:
        pass
    lookups = request.app[TRIGGER_LOOKUPS]
    pending = lookups.get(trigger_id)
    if pending is None:
        pending = asyncio.ensure_future(request.app[STORE].get(trigger_id))
        lookups[trigger_id] = pending
        try:
            trigger = await asyncio.shield(pending)
        finally:
            lookups.pop(trigger_id, None)
        cache[trigger_id] = trigger
        return trigger
    return await asyncio.shield(pending)


def _authentic(trigger: Trigger | None, ref: TriggerRef, secret: str) -> bool:
    return (
        trigger is not None
        and not trigger.revoked
        and (trigger.cluster, trigger.app, trigger.action) == (ref.cluster, ref.app, ref.action)
        and trigger.accepts_secret(secret, utcnow())
    )


async def _verified(request: web.Request, ref: TriggerRef, secret: str) -> Trigger | None:
    if not looks_like_secret(secret):
        return None
    trigger = await _lookup(request, ref.trigger_id)
    if not _authentic(trigger, ref, secret) and trigger is not None and not trigger.revoked:
        # The cached copy may predate a rotation made through another gateway or the CLI:
        # read once more, so a new secret works at once everywhere.
        trigger = await _lookup(request, ref.trigger_id, fresh=True)
    return trigger if _authentic(trigger, ref, secret) else None


async def _authenticate(request: web.Request, ref: TriggerRef, secret: str) -> Trigger:
    limiter = request.app[AUTH_LIMITER]
    address = client_address(request)
    if wait := limiter.blocked_for(address):
        raise ApiError(
            429,
            "too_many_failed_attempts",
            "too many calls with a wrong trigger or secret from this address; wait and retry",
            headers={"Retry-After": limiter.retry_after(wait)},
        )
    trigger = await _verified(request, ref, secret)
    if trigger is None:
        limiter.failed(address)
        raise _FORBIDDEN
    return trigger


def _correlation_id(request: web.Request, job_id: str) -> str:
    given = request.headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.match(given) else job_id


async def _read_body(request: web.Request) -> bytes:
    # Bound the body first, so an oversized call is refused with 413 before anything happens.
    if request.method != "POST":
        return b""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"the body is limited to {limit} bytes")
    return await request.read()


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


async def _admit(request: web.Request, trigger: Trigger, event: EventCall | None) -> Admission:
    """The trigger's policy; an event's claims are released when it holds the call back."""
    try:
        sender = event.origin.source if event else None
        admission = await admit(request, trigger, utcnow(), sender=sender)
    except ApiError:
        if event:
            await event.failed()
        raise
    if admission.ignored is not None and event:
        await event.failed()
    return admission


async def handle_trigger(request: web.Request) -> web.Response:
    """Run a trigger: 202 with the job id once the broker confirmed the command."""
    body = await _read_body(request)
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

    wait_s = parse_wait(_single(query, "wait"), request.app[SETTINGS])
    direction, step = _call_parameters(trigger, query)
    event = await inspect_call(
        request,
        trigger,
        body,
        source=_single(query, "source"),
        direction=direction,
        step=step,
        secret_in_query=secret_in_query,
    )
    if isinstance(event, web.Response):
        return event  # a valid event this trigger does not act on
    command = _command(trigger, query, event)
    admission = await _admit(request, trigger, event)
    if admission.ignored is not None:
        return admission.ignored

    job_id = new_job_id()
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

    async def publish() -> None:
        try:
            await request.app[BUS].publish_command(envelope)
        except BaseException as exc:
            if event:
                await event.failed()
            if isinstance(exc, BrokerUnavailable):
                await admission.release()
            raise
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
        return await hold_call(request, trigger, envelope, answer, event=event, admission=admission)
    # With wait=N, the job's result within N seconds instead of the 202 (gateway/jobs.py).
    return await run_job(request, envelope, answer, publish, wait=wait_s)
