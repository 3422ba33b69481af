"""Prometheus metrics, defined once per process in the default registry.

Each service exports only its own families (`metrics_response`): a worker's ``/metrics``
has no gateway series and the other way round, by the family's name (``triggers_gateway_``,
``triggers_worker_``, ``triggers_recorder_``, plus the few a service shares). Label values
come from small closed sets (actions, statuses, outcomes, orchestrator names), never from
caller input, so cardinality stays bounded.

`triggers gateway --processes N` runs N processes that one scrape must show as one
gateway: they run in prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
set by the supervisor before the processes start), and a scrape answered by any of them
adds up every process's counters and histograms. A gauge says how it is combined
(``multiprocess_mode``): what describes one process is labelled with its ``pid``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from shared.errors import ConfigError
from shared.http import name_server

__all__ = [
    "APPLY_SECONDS",
    "DEAD_LETTERS",
    "GATEWAY_CALLS",
    "JOBS_BY_STATUS",
    "JOBS_RECORDED",
    "NOTIFICATIONS",
    "PUBLISH_SECONDS",
    "QUEUE_MESSAGES",
    "RESULTS",
    "RETRIES",
    "WAITING",
    "labelled",
    "metrics_response",
    "multiprocess_dir",
    "serve_metrics",
]

# The families each service exports, by name prefix; process_* and python_* describe the
# process itself and go with every service. A service not listed exports everything
# (`triggers dev` runs every service in one process).
_OWN: dict[str, tuple[str, ...]] = {
    "gateway": ("triggers_gateway_", "triggers_publish_", "triggers_queue_", "triggers_jobs"),
    "worker": ("triggers_worker_", "triggers_publish_"),
    "recorder": ("triggers_recorder_",),
    "notifier": ("triggers_notifier_",),
}
_PROCESS = ("process_", "python_")

# Publishing to RabbitMQ on loopback takes around a millisecond; a broker under pressure
# can take seconds before the publish timeout.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_APPLY_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

GATEWAY_CALLS = Counter(
    "triggers_gateway_calls",
    "Trigger calls by action (unknown until the trigger is authenticated) and outcome; "
    "docs/operating.md lists the outcomes.",
    ["action", "outcome"],
)
PUBLISH_SECONDS = Histogram(
    "triggers_publish_seconds",
    "Time from publish to the broker's confirm, by message kind.",
    ["kind"],
    buckets=_LATENCY_BUCKETS,
)
WAITING = Gauge(
    "triggers_gateway_waiting_requests",
    "Trigger calls waiting for their job's result (wait=N), by gateway process (pid) "
    "when the gateway runs several.",
    multiprocess_mode="liveall",
)
# Shared state, read by whichever process was scraped: the latest reading wins.
QUEUE_MESSAGES = Gauge(
    "triggers_queue_messages",
    "Messages ready in a queue, read at most every few seconds when scraped.",
    ["queue"],
    multiprocess_mode="mostrecent",
)
JOBS_BY_STATUS = Gauge(
    "triggers_jobs",
    "Jobs in the history store by status, read at most every few seconds when scraped.",
    ["status"],
    multiprocess_mode="mostrecent",
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
NOTIFICATIONS = Counter(
    "triggers_notifier_deliveries",
    "Notification deliveries by sink type and outcome (delivered, retried, dead_lettered, "
    "digest_queued).",
    ["type", "outcome"],
)
JOBS_RECORDED = Counter(
    "triggers_recorder_events", "Job events written to the history store, by status.", ["status"]
)


_M = TypeVar("_M", bound=MetricWrapperBase)


@functools.cache
def labelled(metric: _M, *values: str) -> _M:
    """`metric.labels(*values)`, looked up once per label set: ``labels`` takes a lock and
    checks every value on each call, a few µs on every call and command. Label sets come
    from closed sets (see above), so the cache stays small; no metric here is ever cleared.
    """
    return metric.labels(*values)


def multiprocess_dir() -> str | None:
    """The directory the processes of one gateway share their values in, if they do."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _Only:
    """The families of `source` that belong to `service` (a collector for one scrape)."""

    def __init__(self, source: CollectorRegistry, service: str | None) -> None:
        self._source = source
        self._prefixes = (*_OWN[service], *_PROCESS) if service in _OWN else ("",)

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            if family.name.startswith(self._prefixes):
                yield family


def _registry() -> CollectorRegistry:
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    # Every process's files, added up; built per scrape, as prometheus-client prescribes.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]  # the module has no annotations
    return registry


def metrics_response(service: str | None = None) -> web.Response:
    """`service`'s metrics (all of this process's without one) in the Prometheus text format."""
    response = web.Response(body=generate_latest(_Only(_registry(), service)))
    # aiohttp refuses a charset inside content_type; set the header whole.
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def serve_metrics(
    host: str, port: int, service: str | None = None, ready: Callable[[], bool] | None = None
) -> web.AppRunner:
    """Serve `service`'s ``/metrics`` on its own port (workers and the recorder have no
    HTTP API), with ``/healthz`` (the process answers) and ``/readyz`` (`ready()`:
    connected) for the orchestrator's probes."""

    async def metrics(request: web.Request) -> web.Response:
        return metrics_response(service)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, dumps=_dumps_line)

    async def readyz(request: web.Request) -> web.Response:
        if ready is None or ready():
            return web.json_response({"status": "ready"}, dumps=_dumps_line)
        body = {"status": "unready", "broker": "down"}
        return web.json_response(body, status=503, dumps=_dumps_line)

    app = web.Application()
    name_server(app)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        msg = f"cannot serve metrics on {host}:{port}: {reason}; choose another --metrics-port"
        raise ConfigError(msg) from None
    return runner


def _dumps_line(data: object) -> str:
    return json.dumps(data) + "\n"
