"""The gateway's app factory and runner."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from cachetools import TTLCache

from gateway.abuse import FailedAuthLimiter
from gateway.admin import add_admin_routes
from gateway.audit import audit_middleware
from gateway.console import add_console
from gateway.errors import error_middleware, json_response
from gateway.hook import handle_trigger
from gateway.jobs import handle_job, handle_jobs
from gateway.keys import (
    ACCEPTED,
    AUDIT,
    AUTH_LIMITER,
    BUS,
    JOBS,
    LIMITS,
    METRICS_GAUGES,
    RECENT_EVENTS,
    SETTINGS,
    STORE,
    TRIGGER_CACHE,
    TRIGGER_LOOKUPS,
    WAITER,
)
from gateway.limits import CallLimits, open_limits
from gateway.metrics import metrics_handler, metrics_listener, metrics_middleware, open_gauges
from gateway.recent import open_recent
from gateway.shared_state import open_redis
from gateway.waiter import ResultWaiter
from shared.audit import AuditLog
from shared.batch import WriteBehind
from shared.bus import AmqpBus, Bus
from shared.http import name_server
from shared.jobs import JobStore, open_job_store
from shared.logging import configure_logging
from shared.loop import new_event_loop, tune_gc
from shared.settings import Settings
from shared.store import TriggerStore, open_store

__all__ = ["create_app", "run_gateway"]

log = structlog.get_logger("triggers.gateway")

# How soon an accepted job is in the history for every gateway (this one knows at once).
ACCEPTED_FLUSH_INTERVAL = 0.05


async def _healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _store_up(request: web.Request) -> bool:
    try:
        async with asyncio.timeout(2.0):
            await request.app[JOBS].ping()
            await request.app[STORE].get("readyz")
    except Exception as exc:  # any failure means "not reachable"; the log says which
        log.warning("gateway.store_unreachable", error=repr(exc))
        return False
    return True


async def _readyz(request: web.Request) -> web.Response:
    """Ready when a call can be accepted: broker connected and store reachable."""
    bus = request.app[BUS]
    broker = bus.ready
    store = await _store_up(request)
    body = {
        "status": "ready" if broker and store else "unready",
        "broker": "up" if broker else "down",
        # Which RabbitMQ node this process publishes to (of the TRIGGERS_AMQP_URL list).
        "node": bus.node,
        "store": "up" if store else "down",
    }
    if broker and store:
        return json_response(body)
    return json_response(body, status=503, headers={"Retry-After": "5"})


def _start_writers(app: web.Application, settings: Settings) -> None:
    """What calls leave behind, written in batches off the hot path (`shared.batch`)."""
    app[AUDIT] = AuditLog(
        app[STORE],
        interval=settings.audit_flush_interval,
        max_pending=settings.audit_max_pending,
    )
    app[AUDIT].start()
    app[ACCEPTED] = WriteBehind(
        app[JOBS].record_accepted, name="jobs.accepted", interval=ACCEPTED_FLUSH_INTERVAL
    )
    app[ACCEPTED].start()


def create_app(
    settings: Settings,
    *,
    store: TriggerStore | None = None,
    bus: Bus | None = None,
    jobs: JobStore | None = None,
    limits: CallLimits | None = None,
    metrics_of: str | None = "gateway",
    metrics_reuse_port: bool = False,
) -> web.Application:
    """The gateway application. Resources not passed in are opened from the settings.

    ``/metrics`` shows `metrics_of`'s families (None: all of this process's, when it runs
    every service as `triggers dev` does); with ``settings.metrics_port`` on a listener of
    its own (bound with SO_REUSEPORT when `metrics_reuse_port`) instead of the app's port.

    A bus passed in is used as it is (its owner starts and closes it); one opened here
    connects in the background, so the gateway starts and answers 503 while RabbitMQ is
    down, and recovers by itself. The store's schema is migrated at start.
    """
    # The body limit is enforced by aiohttp itself as well as by the handler. The audit
    # middleware is outermost, so it sees the final status of every call.
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[audit_middleware, metrics_middleware, error_middleware],
    )
    name_server(app)
    app[SETTINGS] = settings
    app[WAITER] = ResultWaiter()
    app[TRIGGER_CACHE] = TTLCache(maxsize=10_000, ttl=settings.trigger_cache_ttl)
    app[AUTH_LIMITER] = FailedAuthLimiter(settings.auth_failures_per_minute)
    app[TRIGGER_LOOKUPS] = {}
    app[METRICS_GAUGES] = open_gauges(app)

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        app[STORE] = store if store is not None else open_store(settings.database)
        app[JOBS] = jobs if jobs is not None else open_job_store(settings.database)
        await app[STORE].start()
        _start_writers(app, settings)
        yield
        await app[ACCEPTED].close()
        await app[AUDIT].close()
        if store is None:
            await app[STORE].close()
        if jobs is None:
            await app[JOBS].close()

    async def shared_state_ctx(app: web.Application) -> AsyncIterator[None]:
        # One Redis client per process, for all the state the gateways share.
        redis = open_redis(settings.redis_url) if settings.redis_url else None
        app[LIMITS] = limits or open_limits(redis, settings.redis_prefix)
        app[RECENT_EVENTS] = open_recent(redis, settings.redis_prefix)
        yield
        if redis is not None:
            await redis.aclose()

    async def bus_ctx(app: web.Application) -> AsyncIterator[None]:
        if bus is not None:
            app[BUS] = bus
            await app[WAITER].start(bus)
            yield
            return
        owned = AmqpBus.from_settings(settings, "gateway")
        owned.start_in_background()
        app[BUS] = owned
        app[WAITER].start_when_connected(owned)
        yield
        await app[WAITER].close()
        await owned.close()

    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(bus_ctx)
    app.cleanup_ctx.append(shared_state_ctx)
    _add_routes(app)
    if settings.metrics_port is None:
        app.router.add_get("/metrics", metrics_handler(metrics_of))
    else:
        # Last: it reads the store and the broker the contexts above open.
        app.cleanup_ctx.append(metrics_listener(reuse_port=metrics_reuse_port, service=metrics_of))
    return app


def _add_routes(app: web.Application) -> None:
    app.router.add_route("GET", "/hook/trigger", handle_trigger)
    app.router.add_route("POST", "/hook/trigger", handle_trigger)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/v1/jobs", handle_jobs)
    app.router.add_get("/v1/jobs/{job_id}", handle_job)
    add_admin_routes(app)
    add_console(app)


def _serve(settings: Settings, host: str, port: int, reuse_port: bool) -> None:
    """One gateway process: serve until SIGTERM/SIGINT, finishing in-flight requests."""
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings, metrics_reuse_port=reuse_port)
    tune_gc()
    web.run_app(
        app,
        host=host,
        port=port,
        reuse_port=reuse_port or None,
        access_log=None,  # the access log would print query strings, and so secrets
        shutdown_timeout=settings.shutdown_timeout,
        print=None,
        loop=new_event_loop(),
    )


def run_gateway(settings: Settings, host: str, port: int, processes: int = 1) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get the shutdown timeout to finish.

    With ``processes > 1`` this process only supervises: N gateway processes bind the same
    port with SO_REUSEPORT and the kernel spreads connections over them (one event loop
    per core). If one dies, the others are stopped too and the exit status says so, so the
    service manager restarts the whole set rather than running silently short. They keep
    their metrics in a directory of their own (prometheus-client's multiprocess mode), so
    that a scrape answered by any of them shows the whole gateway; it is removed at exit.
    """
    log.info(
        "gateway.starting",
        host=host,
        port=port,
        processes=processes,
        database=settings.database.split("://", maxsplit=1)[0],
        limits="redis" if settings.redis_url else "memory",
        admin_api=settings.admin_token is not None,
    )
    if processes <= 1:
        _serve(settings, host, port, reuse_port=False)
        return
    # Read by prometheus-client when each process imports it (they start after this).
    metrics_dir = tempfile.mkdtemp(prefix="triggers-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _supervise(settings, host, port, processes)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(settings: Settings, host: str, port: int, processes: int) -> None:
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_serve, args=(settings, host, port, True), name=f"gateway-{i}")
        for i in range(processes)
    ]
    stopping = False

    def stop(signum: int = signal.SIGTERM, frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.start()
    while any(child.is_alive() for child in children):
        multiprocessing.connection.wait([c.sentinel for c in children], timeout=1.0)
        dead = [c for c in children if not c.is_alive()]
        if dead and not stopping:
            log.error("gateway.process_exited", exitcode=dead[0].exitcode, processes=processes)
            stop()
    for child in children:
        child.join()
    failed = [c.exitcode for c in children if c.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        sys.exit(1)
