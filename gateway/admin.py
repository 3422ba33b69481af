"""The admin HTTP API under ``/v1``: manage triggers and read the audit trail.

Every route but the OpenAPI document needs ``Authorization: Bearer <TRIGGERS_ADMIN_TOKEN>``
(compared in constant time); without a configured token the API answers 403
``admin_disabled``. Bodies are decoded with the Structs of `shared/api.py`, from which
``/v1/openapi.json`` is generated: a malformed body is 400 ``invalid_json``, a body that
does not fit the schema or a policy that cannot hold is 422 ``invalid_body``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import structlog
from aiohttp import web

from gateway.client import client_address
from gateway.errors import ApiError, json_response
from gateway.keys import AUDIT, AUTH_LIMITER, SETTINGS, STORE, TRIGGER_CACHE
from gateway.openapi import openapi_document
from shared.admin import ListFilter, StoreAdmin
from shared.api import RotateRequest, TriggerCreate, TriggerView
from shared.policy import PolicyChanges
from shared.triggers import NAME_PATTERN

__all__ = ["add_admin_routes", "is_admin", "require_admin"]

log = structlog.get_logger("triggers.admin")

T = TypeVar("T")
_TRIGGER_ID = re.compile(r"^[a-z0-9]{8,64}$")


def _json(
    data: msgspec.Struct, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response(data, status=status, headers=headers)


def is_admin(request: web.Request) -> bool:
    """Whether the request carries the admin token (no error, no count when it does not)."""
    token = request.app[SETTINGS].admin_token
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return (
        bool(token)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), (token or "").encode())
    )


def require_admin(request: web.Request) -> None:
    """The admin bearer token, compared in constant time: 401 without it, 403 when the
    gateway has none configured (the admin API is off)."""
    token = request.app[SETTINGS].admin_token
    if not token:
        raise ApiError(
            403,
            "admin_disabled",
            "the admin API is disabled on this gateway; set TRIGGERS_ADMIN_TOKEN to enable it",
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        # Wrong tokens are limited per address like wrong secrets; the right one always works.
        limiter = request.app[AUTH_LIMITER]
        if wait := limiter.failed(f"{client_address(request)} admin"):
            raise ApiError(
                429,
                "too_many_failed_attempts",
                "too many calls with a wrong admin token from this address; wait and retry",
                headers={"Retry-After": limiter.retry_after(wait)},
            )
        raise ApiError(
            401,
            "unauthorized",
            "send the admin token as 'Authorization: Bearer <TRIGGERS_ADMIN_TOKEN>'",
            headers={"WWW-Authenticate": 'Bearer realm="container-triggers"'},
        )


def _integral(value: Any) -> Any:
    # JSON Schema counts 5.0 as an integer; msgspec's strict mode would refuse it.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


async def _body(request: web.Request, kind: type[T], *, optional: bool = False) -> T:
    raw = await request.read()
    if optional and not raw.strip():
        raw = b"{}"
    try:
        data = _integral(msgspec.json.decode(raw))
    except (msgspec.DecodeError, RecursionError):
        raise ApiError(
            400,
            "invalid_json",
            "the body is not valid JSON (or is nested too deeply); send one JSON object",
        ) from None
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "invalid_body", f"{exc}; the schema is at /v1/openapi.json") from None


Parser = Callable[[str, str], Any]


def _int_in(low: int, high: int) -> Parser:
    def parse(name: str, value: str) -> int:
        if not re.fullmatch(r"[0-9]{1,9}", value) or not low <= int(value) <= high:
            msg = f"{name} must be a whole number from {low} to {high}, got {value[:32]!r}"
            raise ApiError(400, "invalid_parameter", msg)
        return int(value)

    return parse


def _one_of(*choices: str) -> Parser:
    def parse(name: str, value: str) -> str:
        if value not in choices:
            msg = f"{name} must be one of {', '.join(choices)}, got {value[:32]!r}"
            raise ApiError(400, "invalid_parameter", msg)
        return value

    return parse


def _matching(pattern: re.Pattern[str], what: str) -> Parser:
    def parse(name: str, value: str) -> str:
        if not pattern.fullmatch(value):
            raise ApiError(400, "invalid_parameter", f"{name} must be {what}, got {value[:32]!r}")
        return value

    return parse


_NAME = _matching(NAME_PATTERN, "a cluster, app or service name")


def _query(request: web.Request, parsers: dict[str, Parser]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in request.query:
        if name not in parsers:
            msg = f"unknown parameter {name[:32]!r}; this endpoint takes {', '.join(parsers)}"
            raise ApiError(400, "unknown_parameter", msg)
        given = request.query.getall(name)
        if len(given) > 1:
            raise ApiError(400, "duplicate_parameter", f"{name} is given {len(given)} times")
        values[name] = parsers[name](name, given[0])
    return values


def _trigger_id(request: web.Request) -> str:
    trigger_id = request.match_info["trigger_id"]
    if not _TRIGGER_ID.fullmatch(trigger_id):
        msg = f"no trigger {trigger_id[:64]!r}; GET /v1/triggers lists them"
        raise ApiError(404, "trigger_not_found", msg)
    return trigger_id


def _changed(request: web.Request, view: TriggerView) -> None:
    # This gateway forgets its cached copy at once; others within their cache TTL.
    request.app[TRIGGER_CACHE].invalidate(view.id)
    log.info("admin.trigger_changed", trigger_id=view.id, method=request.method, path=request.path)


Route = Callable[[web.Request], Awaitable[web.Response]]
Operation = Callable[[web.Request, StoreAdmin], Awaitable[web.Response]]


def _admin(operation: Operation) -> Route:
    """Authorize, run the operation on the store (an `AdminError` is answered by the
    error middleware, as every `RequestError`)."""

    async def route(request: web.Request) -> web.Response:
        require_admin(request)
        settings = request.app[SETTINGS]
        return await operation(request, StoreAdmin(request.app[STORE], settings.public_url))

    route.__doc__ = operation.__doc__
    return route


async def create_trigger(request: web.Request, admin: StoreAdmin) -> web.Response:
    """POST /v1/triggers: 201 with the trigger, its callable url and its secret."""
    view = await admin.create(await _body(request, TriggerCreate))
    log.info("admin.trigger_created", trigger_id=view.id, action=view.action)
    return _json(view, 201, headers={"Location": f"/v1/triggers/{view.id}"})


async def list_triggers(request: web.Request, admin: StoreAdmin) -> web.Response:
    """GET /v1/triggers: filter by cluster, app, action and status; page with limit/offset."""
    query = _query(
        request,
        {
            "cluster": _NAME,
            "app": _NAME,
            "action": _one_of("redeploy", "scale"),
            "status": _one_of("active", "disabled", "expired", "revoked", "all"),
            "limit": _int_in(1, 1000),
            "offset": _int_in(0, 1_000_000),
        },
    )
    status = query.pop("status", None)
    selection = msgspec.convert(
        {
            **query,
            "status": None if status == "all" else status,
            "include_revoked": status == "all",
        },
        ListFilter,
    )
    return _json(await admin.list(selection))


async def get_trigger(request: web.Request, admin: StoreAdmin) -> web.Response:
    """GET /v1/triggers/{id}."""
    return _json(await admin.get(_trigger_id(request)))


async def update_trigger(request: web.Request, admin: StoreAdmin) -> web.Response:
    """PATCH /v1/triggers/{id}: change the policy; absent fields stay, null clears."""
    trigger_id = _trigger_id(request)
    view = await admin.update(trigger_id, await _body(request, PolicyChanges))
    _changed(request, view)
    return _json(view)


async def revoke_trigger(request: web.Request, admin: StoreAdmin) -> web.Response:
    """DELETE /v1/triggers/{id}: revoke (idempotent); calls answer 403 within seconds.

    The record stays (GET shows it as revoked) so the audit trail keeps its meaning.
    """
    view = await admin.revoke(_trigger_id(request))
    _changed(request, view)
    return _json(view)


async def rotate_trigger(request: web.Request, admin: StoreAdmin) -> web.Response:
    """POST /v1/triggers/{id}/rotate: a new secret now, the old one for `grace` seconds."""
    trigger_id = _trigger_id(request)
    body = await _body(request, RotateRequest, optional=True)
    view = await admin.rotate(trigger_id, body.grace)
    _changed(request, view)
    return _json(view)


async def list_audit(request: web.Request, admin: StoreAdmin) -> web.Response:
    """GET /v1/audit: the calls, newest first; filter by trigger and outcome."""
    query = _query(
        request,
        {
            "trigger_id": _matching(_TRIGGER_ID, "a trigger id"),
            "outcome": _one_of("accepted", "ignored", "rejected"),
            "before": _int_in(1, 2**62),
            "limit": _int_in(1, 1000),
        },
    )
    # Entries still queued on this gateway are written first, so a call just made shows.
    await request.app[AUDIT].flush()
    return _json(await admin.audit(**query))


async def openapi(request: web.Request) -> web.Response:
    """GET /v1/openapi.json: the API's description (no token needed)."""
    return json_response(openapi_document(request.app[SETTINGS].public_url))


def add_admin_routes(app: web.Application) -> None:
    """Register the admin API on the gateway."""
    app.router.add_post("/v1/triggers", _admin(create_trigger))
    app.router.add_get("/v1/triggers", _admin(list_triggers), allow_head=False)
    app.router.add_get("/v1/triggers/{trigger_id}", _admin(get_trigger), allow_head=False)
    app.router.add_patch("/v1/triggers/{trigger_id}", _admin(update_trigger))
    app.router.add_delete("/v1/triggers/{trigger_id}", _admin(revoke_trigger))
    app.router.add_post("/v1/triggers/{trigger_id}/rotate", _admin(rotate_trigger))
    app.router.add_get("/v1/audit", _admin(list_audit), allow_head=False)
    app.router.add_get("/v1/openapi.json", openapi, allow_head=False)
