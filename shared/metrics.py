"""Prometheus metrics, defined once per process in the default registry.

Every process (gateway, worker, recorder) exposes the same registry; each fills the
series it owns. Label values come from small closed sets (actions, statuses, outcomes,
orchestrator names), never from caller input, so cardinality stays bounded.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from shared.http import name_server

__all__ = [
    "APPLY_SECONDS",
    "DEAD_LETTERS",
    "GATEWAY_CALLS",
    "JOBS_BY_STATUS",
    "JOBS_RECORDED",
    "PUBLISH_SECONDS",
    "QUEUE_MESSAGES",
    "RESULTS",
    "RETRIES",
    "WAITING",
    "metrics_response",
    "serve_metrics",
]

# Publishing to RabbitMQ on loopback takes around a millisecond; a broker under pressure
# can take seconds before the publish timeout.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_APPLY_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

GATEWAY_CALLS = Counter(
    "triggers_gateway_calls",
    "Trigger calls by action and outcome (accepted, succeeded, failed, skipped, timed_out, "
    "ignored, bad_request, unauthorized, forbidden, replay, bad_event, too_large, "
    "rate_limited, unavailable, error).",
    ["action", "outcome"],
)
PUBLISH_SECONDS = Histogram(
    "triggers_publish_seconds",
    "Time from publish to the broker's confirm, by message kind.",
    ["kind"],
    buckets=_LATENCY_BUCKETS,
)
WAITING = Gauge(
    "triggers_gateway_waiting_requests", "Trigger calls waiting for their job's result (wait=N)."
)
QUEUE_MESSAGES = Gauge(
    "triggers_queue_messages", "Messages ready in a queue, read at scrape time.", ["queue"]
)
JOBS_BY_STATUS = Gauge(
    "triggers_jobs", "Jobs in the history store by status, read at scrape time.", ["status"]
)
RESULTS = Counter(
    "triggers_worker_results",
    "Results published by this worker, by action, status and orchestrator.",
    ["action", "status", "orchestrator"],
)
APPLY_SECONDS = Histogram(
    "triggers_worker_apply_seconds",
    "Time an orchestrator took to apply a command (successful or not).",
    ["orchestrator", "action"],
    buckets=_APPLY_BUCKETS,
)
RETRIES = Counter(
    "triggers_worker_retries", "Commands requeued after a retryable error.", ["action"]
)
DEAD_LETTERS = Counter(
    "triggers_worker_dead_letters",
    "Commands dead-lettered, by why (failed, undecodable).",
    ["reason"],
)
JOBS_RECORDED = Counter(
    "triggers_recorder_events", "Job events written to the history store, by status.", ["status"]
)


def metrics_response() -> web.Response:
    """The registry in the Prometheus text format."""
    response = web.Response(body=generate_latest(REGISTRY))
    # aiohttp refuses a charset inside content_type; set the header whole.
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _metrics(request: web.Request) -> web.Response:
    return metrics_response()


async def serve_metrics(host: str, port: int) -> web.AppRunner:
    """Serve ``/metrics`` on its own port (workers and the recorder have no HTTP API)."""
    app = web.Application()
    name_server(app)
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
