"""The gateway's metrics: trigger calls by action and outcome, and ``GET /metrics``.

``/metrics`` is served on the gateway's port, or with ``TRIGGERS_METRICS_PORT`` on a
listener of its own (address ``TRIGGERS_METRICS_ADDR``) and then not on the public port.
A scrape is cheap whatever the rate: the gauges that describe shared state (queue depths,
jobs by status) are read at most once per ``TRIGGERS_METRICS_CACHE_TTL`` seconds by one
scrape at a time, with a short bound, so a flood of scrapes costs neither the broker nor
the store anything, and a slow broker or store never hangs a scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from gateway.gauges import SharedGauges
from gateway.keys import BUS, JOBS, LOG_FIELDS, METRICS_GAUGES, OUTCOME, SETTINGS
from gateway.outcomes import Refused
from shared.http import name_server
from shared.jobs import JOB_STATUSES
from shared.metrics import (
    GATEWAY_CALLS,
    JOBS_BY_STATUS,
    QUEUE_MESSAGES,
    labelled,
    metrics_response,
)

__all__ = [
    "OUTCOME_BY_STATUS",
    "count_call",
    "metrics_handler",
    "metrics_listener",
    "open_gauges",
]

log = structlog.get_logger("triggers.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TRIGGER_PATH = "/hook/trigger"
_READ_BOUND = 2.0
# Outcomes of answers without a call outcome (refused, failed, or before authentication);
# the others are labelled by their outcome (`gateway.outcomes`: accepted, succeeded,
# failed, skipped, timed_out, ignored, pending_approval, replayed). docs/operating.md lists them all.
OUTCOME_BY_STATUS = {
    200: "ignored",  # a valid event this trigger does not act on
    202: "accepted",
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "replay",
    413: "too_large",
    422: "bad_event",
    429: "rate_limited",
    503: "unavailable",
}


def count_call(request: web.Request, response: web.StreamResponse) -> None:
    """Count a trigger call once, by action (once the trigger is known) and outcome."""
    if request.path == _TRIGGER_PATH:
        called = request.get(OUTCOME)
        outcome = (
            called.label
            if called is not None and not isinstance(called, Refused)
            else OUTCOME_BY_STATUS.get(response.status, "error")
        )
        action = request.get(LOG_FIELDS, {}).get("action", "unknown")
        labelled(GATEWAY_CALLS, action, outcome).inc()


def open_gauges(app: web.Application) -> SharedGauges:
    """The app's queue-depth and job-count gauges, read at most once per the settings' TTL."""
    return SharedGauges(lambda: _read(app), app[SETTINGS].metrics_cache_ttl)


async def _read(app: web.Application) -> None:
    bus = app[BUS]
    if bus.ready:
        try:
            async with asyncio.timeout(_READ_BOUND):
                depths = await bus.queue_depths()
            for queue, depth in (depths or {}).items():
                QUEUE_MESSAGES.labels(queue).set(depth)
        except Exception as exc:  # a scrape must answer even when the broker does not
            log.warning("gateway.metrics_queue_depths_failed", error=repr(exc))
    try:
        async with asyncio.timeout(_READ_BOUND):
            counts = await app[JOBS].counts()
    except Exception as exc:  # idem for the store
        log.warning("gateway.metrics_job_counts_failed", error=repr(exc))
        return
    for status in JOB_STATUSES:
        JOBS_BY_STATUS.labels(status).set(counts.get(status, 0))


async def _answer(app: web.Application, service: str | None) -> web.Response:
    await app[METRICS_GAUGES].refresh()
    return metrics_response(service)


def metrics_handler(service: str | None = "gateway") -> Handler:
    """``GET /metrics`` in the Prometheus text format, on the gateway's own port."""

    async def handle_metrics(request: web.Request) -> web.Response:
        return await _answer(request.app, service)

    return handle_metrics


def metrics_listener(
    *, reuse_port: bool, service: str | None = "gateway"
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context serving the gateway's ``/metrics`` on the metrics address.

    With several gateway processes each binds the port too (SO_REUSEPORT); whichever one
    answers reports them all (`shared.metrics`).
    """

    async def listener(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        assert settings.metrics_port is not None  # noqa: S101 - create_app checks

        async def metrics(request: web.Request) -> web.Response:
            return await _answer(app, service)

        metrics_app = web.Application()
        name_server(metrics_app)
        metrics_app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(metrics_app, access_log=None)
        await runner.setup()
        site = web.TCPSite(
            runner, settings.metrics_host, settings.metrics_port, reuse_port=reuse_port or None
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            msg = (
                f"cannot serve /metrics on {settings.metrics_host}:{settings.metrics_port} "
                f"({exc.strerror or exc}); set TRIGGERS_METRICS_PORT / --metrics-port to a free port"
            )
            raise OSError(exc.errno, msg) from None
        log.info("metrics.serving", host=settings.metrics_host, port=settings.metrics_port)
        yield
        await runner.cleanup()

    return listener
