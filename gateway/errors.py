"""HTTP errors as JSON: ``{"error": code, "detail": text}``, mapped in one place (`answered`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from gateway.client import client_address
from gateway.keys import ERROR, LOG_FIELDS, OUTAGES
from gateway.shared_state import RedisOutage
from shared.encoding import encode_json
from shared.errors import BrokerUnavailable, RequestError, StoreUnavailable

__all__ = [
    "ApiError",
    "ErrorAnswer",
    "answered",
    "error_answer",
    "json_error",
    "json_response",
]

log = structlog.get_logger("triggers.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(RequestError):
    """An error answer: status, stable code, and a detail that says how to fix it."""


@dataclass(frozen=True)
class ErrorAnswer:
    """What an error is answered with: ``{"error": code, "detail": detail}`` and headers."""

    status: int
    code: str
    detail: str
    headers: dict[str, str] | None = None


# An outage is one warning line when it starts and one per 30 s after it, with a count,
# not a line (or a traceback) per call; each request still has its summary line. The
# trackers are the app's (`outage_trackers`), so one gateway's outage never silences another's.
_BROKER_OUTAGE = "gateway.broker_unavailable"
_STORE_OUTAGE = "gateway.store_unavailable"

# The one table: every error a handler may raise, its answer and the outage it logs as. A
# `RequestError` (`ApiError`, `AdminError`) carries its own; anything else not listed is a 500.
_TABLE: tuple[tuple[type[Exception], ErrorAnswer, str | None], ...] = (
    (
        BrokerUnavailable,
        ErrorAnswer(
            503,
            "broker_unavailable",
            "the message broker cannot take the command right now; retry after a few seconds",
            {"Retry-After": "5"},
        ),
        _BROKER_OUTAGE,
    ),
    (
        StoreUnavailable,
        ErrorAnswer(
            503,
            "store_unavailable",
            "the database does not answer right now; retry after a few seconds",
            {"Retry-After": "5"},
        ),
        _STORE_OUTAGE,
    ),
)
_INTERNAL = ErrorAnswer(500, "internal_error", "unexpected error; it has been logged")

# aiohttp's own HTTP errors (routing, body size) get a stable code and a useful detail.
_AIOHTTP_ERRORS: dict[int, tuple[str, str]] = {
    404: (
        "not_found",
        "no such endpoint; triggers are called at /hook/trigger, the admin API is under /v1",
    ),
    405: ("method_not_allowed", "this endpoint does not take that method; see the Allow header"),
    413: ("payload_too_large", "the request body is larger than the gateway accepts"),
}


def outage_trackers() -> dict[str, RedisOutage]:
    """One tracker per kind of outage in the table, for one app."""
    return {event: RedisOutage(event, pause=0) for _, _, event in _TABLE if event is not None}


def error_answer(
    exc: Exception, path: str = "", outages: dict[str, RedisOutage] | None = None
) -> ErrorAnswer:
    """The answer to `exc` from the table; an outage (on `outages`, the app's trackers) or
    an unexpected error is logged.

    Called while `exc` is being handled, so that an unexpected error's traceback is logged.
    """
    if isinstance(exc, RequestError):
        return ErrorAnswer(exc.status, exc.code, exc.detail, exc.headers or None)
    for kind, answer, event in _TABLE:
        if isinstance(exc, kind):
            if event is not None:
                trackers = outages if outages is not None else outage_trackers()
                trackers[event].failed(path, exc)
            return answer
    if isinstance(exc, web.HTTPException):
        code, detail = _AIOHTTP_ERRORS.get(exc.status, ("http_error", exc.reason))
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return ErrorAnswer(exc.status, code, detail, headers)
    log.exception("gateway.unhandled_error", path=path)
    return _INTERNAL


def json_response(
    data: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response, encoded with msgspec, ending with a newline (as a terminal wants)."""
    return web.Response(
        body=encode_json(data) + b"\n",
        status=status,
        headers=headers,
        content_type="application/json",
    )


def json_error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The JSON error body every non-2xx answer uses."""
    return json_response({"error": code, "detail": detail}, status=status, headers=headers)


async def answered(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer, every error mapped to JSON; one summary log line per request.

    The line never carries the query string: it holds the secret.
    """
    started = time.monotonic()
    response: web.StreamResponse
    try:
        response = await handler(request)
    except Exception as exc:
        answer = error_answer(exc, request.path, request.app.get(OUTAGES))
        request[ERROR] = (answer.code, answer.detail)
        response = json_error(answer.status, answer.code, answer.detail, answer.headers)
    log.info(
        "gateway.request",
        method=request.method,
        path=request.path,
        status=response.status,
        duration_ms=round((time.monotonic() - started) * 1000, 2),
        remote=client_address(request),
        error=request.get(ERROR, (None,))[0],
        **request.get(LOG_FIELDS, {}),
    )
    return response
