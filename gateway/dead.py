"""The dead-letter queue through the admin API: ``triggers dlq ... --server URL``."""

from __future__ import annotations

import msgspec
from aiohttp import web

from gateway.admin import require_admin
from gateway.errors import ApiError, json_response
from gateway.keys import SETTINGS
from shared.api import DlqReplay
from shared.dlq import list_dead, purge_dead, replay_dead
from shared.errors import BrokerUnavailable

__all__ = ["add_dlq_routes"]


def _unavailable(exc: BrokerUnavailable) -> ApiError:
    return ApiError(503, "broker_unavailable", str(exc), headers={"Retry-After": "5"})


async def _list(request: web.Request) -> web.Response:
    """GET /v1/dlq?limit=N: dead messages and why each died; they stay in the queue."""
    require_admin(request)
    text = request.query.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise ApiError(400, "invalid_limit", "limit must be a whole number from 1 to 10000")
    try:
        dead = await list_dead(request.app[SETTINGS], int(text))
    except BrokerUnavailable as exc:
        raise _unavailable(exc) from None
    return json_response({"messages": msgspec.to_builtins(dead)})


async def _replay(request: web.Request) -> web.Response:
    """POST /v1/dlq/replay ``{"ids": [...]}`` or ``{"all": true}``."""
    require_admin(request)
    try:
        body = msgspec.json.decode(await request.read() or b"{}", type=DlqReplay)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError(
            400, "invalid_body", f'{exc}; send {{"ids": [...]}} or {{"all": true}}'
        ) from None
    if bool(body.ids) == body.all:
        raise ApiError(400, "invalid_body", 'give "ids" (from GET /v1/dlq) or "all": true')
    try:
        outcome = await replay_dead(
            request.app[SETTINGS], None if body.all else set(body.ids or ())
        )
    except BrokerUnavailable as exc:
        raise _unavailable(exc) from None
    return json_response(outcome)


async def _purge(request: web.Request) -> web.Response:
    """DELETE /v1/dlq: drop every dead message."""
    require_admin(request)
    try:
        purged = await purge_dead(request.app[SETTINGS])
    except BrokerUnavailable as exc:
        raise _unavailable(exc) from None
    return json_response({"purged": purged})


def add_dlq_routes(app: web.Application) -> None:
    """Register the dead-letter endpoints of the admin API."""
    app.router.add_get("/v1/dlq", _list, allow_head=False)
    app.router.add_post("/v1/dlq/replay", _replay)
    app.router.add_delete("/v1/dlq", _purge)
