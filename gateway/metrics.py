"""The gateway's metrics: trigger calls by action and outcome, and ``GET /metrics``.

Gauges that describe shared state (queue depths, jobs by status) are read when scraped,
with a short bound, so a slow broker or store never hangs a scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.keys import BUS, JOBS, LOG_FIELDS
from shared.bus import AmqpBus
from shared.jobs import JOB_STATUSES
from shared.metrics import GATEWAY_CALLS, JOBS_BY_STATUS, QUEUE_MESSAGES, metrics_response

__all__ = ["handle_metrics", "metrics_middleware"]

log = structlog.get_logger("triggers.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TRIGGER_PATH = "/hook/trigger"
_SCRAPE_BOUND = 2.0
# Outcomes of answers that are not a job's (those set "outcome" themselves).
_OUTCOME_BY_STATUS = {
    200: "ignored",  # a valid event this trigger does not act on
    400: "bad_request",
    401: "unauthorized",
    409: "replay",
    422: "bad_event",
    403: "forbidden",
    405: "bad_request",
    413: "too_large",
    429: "rate_limited",
    503: "unavailable",
}


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every trigger call once, by action (when known) and outcome."""
    response = await handler(request)
    if request.path == _TRIGGER_PATH:
        fields = request.get(LOG_FIELDS, {})
        outcome = fields.get("outcome") or _OUTCOME_BY_STATUS.get(response.status, "error")
        GATEWAY_CALLS.labels(fields.get("action", "unknown"), outcome).inc()
    return response


async def _refresh(request: web.Request) -> None:
    bus = request.app[BUS]
    if isinstance(bus, AmqpBus) and bus.ready:
        try:
            async with asyncio.timeout(_SCRAPE_BOUND):
                for queue, depth in (await bus.queue_depths()).items():
                    QUEUE_MESSAGES.labels(queue).set(depth)
        except Exception as exc:  # a scrape must answer even when the broker does not
            log.warning("gateway.metrics_queue_depths_failed", error=repr(exc))
    try:
        async with asyncio.timeout(_SCRAPE_BOUND):
            counts = await request.app[JOBS].counts()
    except Exception as exc:  # idem for the store
        log.warning("gateway.metrics_job_counts_failed", error=repr(exc))
        return
    for status in JOB_STATUSES:
        JOBS_BY_STATUS.labels(status).set(counts.get(status, 0))


async def handle_metrics(request: web.Request) -> web.Response:
    """``GET /metrics`` in the Prometheus text format."""
    await _refresh(request)
    return metrics_response()
