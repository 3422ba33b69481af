"""The gateway's app factory and runner."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from gateway.abuse import FailedAuthLimiter
from gateway.admin import add_admin_routes
from gateway.connections import ConnectionGuard, GuardedSite, connection_middleware
from gateway.console import add_console
from gateway.dead import add_dlq_routes
from gateway.errors import json_response, outage_trackers
from gateway.hook import handle_trigger
from gateway.invalidation import follow_changes, periodically, prune_audit_forever
from gateway.jobs import UNSEEN_WAITERS_LIMIT, handle_job, handle_jobs
from gateway.keys import (
    ACCEPTED,
    AUDIT,
    AUTH_LIMITER,
    BUS,
    JOBS,
    LIMITS,
    METRICS_GAUGES,
    OUTAGES,
    RECENT_EVENTS,
    SETTINGS,
    STORE,
    TRIGGER_CACHE,
    UNAUTHENTICATED,
    UNSEEN_WAITERS,
    WAITER,
)
from gateway.limits import CallLimits, open_limits
from gateway.lookup import TriggerCache
from gateway.metrics import metrics_handler, metrics_listener, open_gauges
from gateway.middleware import call_middleware
from gateway.notify import add_notify_routes
from gateway.recent import open_recent
from gateway.shared_state import open_redis
from gateway.waiter import ResultWaiter
from shared.audit import AuditLog, UnauthenticatedTally
from shared.batch import WriteBehind
from shared.broker import AmqpBus, Bus
from shared.errors import ConfigError
from shared.http import name_server
from shared.jobs import JobStore, open_job_store
from shared.logging import configure_logging
from shared.loop import new_event_loop, run, tune_gc
from shared.messages import utcnow
from shared.settings import Settings
from shared.store import TriggerStore, open_store

__all__ = ["create_app", "run_gateway", "tls_context"]

log = structlog.get_logger("triggers.gateway")

# After a wrong secret, a trigger's cached copy is read again when older than this: the
# new secret of a rotation made elsewhere works at once, at most a few reads a second.
TRIGGER_REFRESH_AFTER = 0.25

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
    app[UNAUTHENTICATED] = UnauthenticatedTally(app[AUDIT])
    app[ACCEPTED] = WriteBehind(
        app[JOBS].record_accepted, name="jobs.accepted", interval=ACCEPTED_FLUSH_INTERVAL
    )
    app[ACCEPTED].start()


def _middlewares(connections: ConnectionGuard | None) -> list[Any]:
    # The call middleware (errors, summary line, metrics, audit) sees every final status.
    middlewares: list[Any] = [call_middleware]
    if connections is not None:
        middlewares.insert(0, connection_middleware(connections))
    return middlewares


def _in_memory_state(app: web.Application, settings: Settings) -> None:
    """What the app keeps in memory from its start: waiters, limits, outage trackers."""
    app[WAITER] = ResultWaiter()
    app[AUTH_LIMITER] = FailedAuthLimiter(settings.auth_failures_per_minute)
    app[UNSEEN_WAITERS] = asyncio.Semaphore(UNSEEN_WAITERS_LIMIT)
    app[OUTAGES] = outage_trackers()


def create_app(
    settings: Settings,
    *,
    store: TriggerStore | None = None,
    bus: Bus | None = None,
    jobs: JobStore | None = None,
    limits: CallLimits | None = None,
    metrics_of: str | None = "gateway",
    metrics_reuse_port: bool = False,
    connections: ConnectionGuard | None = None,
) -> web.Application:
    """The gateway application. Resources not passed in are opened from the settings.

    ``/metrics`` shows `metrics_of`'s families (None: all of this process's, when it runs
    every service as `triggers dev` does); with ``settings.metrics_port`` on a listener of
    its own (bound with SO_REUSEPORT when `metrics_reuse_port`) instead of the app's port.

    A bus passed in is used as it is (its owner starts and closes it); one opened here
    connects in the background, so the gateway starts and answers 503 while RabbitMQ is
    down, and recovers by itself. The store's schema is migrated at start. `connections`
    is the serving process's guard (`gateway.connections`), told when requests run.
    """
    # The body limit is enforced by aiohttp itself as well as by the handler.
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=_middlewares(connections)
    )
    name_server(app)
    app[SETTINGS] = settings
    _in_memory_state(app, settings)
    app[METRICS_GAUGES] = open_gauges(app)

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        app[STORE] = store if store is not None else open_store(settings.database)
        app[JOBS] = jobs if jobs is not None else open_job_store(settings.database)
        await app[STORE].start()
        app[TRIGGER_CACHE] = TriggerCache(
            app[STORE], ttl=settings.trigger_cache_ttl, refresh_after=TRIGGER_REFRESH_AFTER
        )
        _start_writers(app, settings)
        async with (
            follow_changes(app[STORE], app[TRIGGER_CACHE]),
            prune_audit_forever(app[STORE], settings.audit_retention),
            periodically(5.0, lambda: app[UNAUTHENTICATED].tick(utcnow())),
        ):
            yield
        await app[ACCEPTED].close()
        app[UNAUTHENTICATED].flush()
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
    add_notify_routes(app)  # sinks, routes, approvals and the approval link page
    add_console(app)
    add_dlq_routes(app)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context of `--tls-cert`/`--tls-key`, or None to serve plain HTTP.

    Raises `ConfigError` naming the setting when only one is given or a file is unusable.
    """
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        msg = "TLS needs both --tls-cert and --tls-key (TRIGGERS_TLS_CERT, TRIGGERS_TLS_KEY)"
        raise ConfigError(msg)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as exc:
        msg = (
            f"cannot use the TLS certificate {settings.tls_cert} with key {settings.tls_key}: "
            f"{exc.reason or exc}; check --tls-cert and --tls-key (PEM files)"
        )
        raise ConfigError(msg) from None
    except OSError as exc:
        msg = (
            f"cannot read the TLS certificate {settings.tls_cert} or key {settings.tls_key}: "
            f"{exc.strerror or exc}; check --tls-cert and --tls-key"
        )
        raise ConfigError(msg) from None
    return context


async def _listen(settings: Settings, host: str, port: int, reuse_port: bool) -> None:
    """Serve until cancelled (aiohttp's `run_app`, with guarded connections)."""
    guard = ConnectionGuard(
        header_timeout=settings.header_timeout,
        idle_timeout=settings.idle_timeout,
        max_per_address=settings.max_connections_per_address,
        exempt=settings.trusted_proxies,
    )
    app = create_app(settings, connections=guard, metrics_reuse_port=reuse_port)
    # SIGTERM/SIGINT raise GracefulExit; cleanup gives requests the shutdown timeout.
    runner = web.AppRunner(
        app, handle_signals=True, access_log=None, shutdown_timeout=settings.shutdown_timeout
    )
    await runner.setup()
    try:
        site = GuardedSite(
            runner,
            host,
            port,
            guard=guard,
            reuse_port=reuse_port,
            ssl_context=tls_context(settings),
            # No access log: it would print query strings, and so secrets. The guard closes
            # idle connections itself; lingering (reading an unread body after the answer,
            # so the caller sees it) is kept short.
            handler_args={
                "access_log": None,
                "keepalive_timeout": settings.idle_timeout,
                "lingering_time": 2.0,
            },
        )
        await site.start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _serve(settings: Settings, host: str, port: int, reuse_port: bool) -> None:
    """One gateway process: serve until SIGTERM/SIGINT, finishing in-flight requests."""
    configure_logging(settings.log_format, settings.log_level)
    tune_gc()
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_listen(settings, host, port, reuse_port))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError, web.GracefulExit):
            loop.run_until_complete(main)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _check_port(host: str, port: int) -> None:
    """Bind the address once, alone (no SO_REUSEPORT), so one already taken fails here.

    Without this a second gateway with --processes would join the first one's port
    through SO_REUSEPORT, and a single process would fail deep inside the server start.
    """
    for address in [h.strip() for h in host.split(",") if h.strip()] or [""]:
        # An IPv6 literal needs its family: the default (IPv4) cannot resolve `::1`.
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            with socket.create_server((address, port), family=family):
                pass
        except OSError as exc:
            # errno's own text; a resolver error (negative errno) says it in its message.
            reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc)
            shown = f"[{address}]" if ":" in address else address
            msg = (
                f"cannot listen on {shown}:{port}: {reason}; "
                "choose another --port or --host (or stop what uses it)"
            )
            raise ConfigError(msg) from None


async def _check_store(settings: Settings) -> None:
    """Open and migrate the store once: a wrong TRIGGERS_DATABASE fails before serving."""
    store = open_store(settings.database)
    try:
        await store.start()
    finally:
        await store.close()


def run_gateway(settings: Settings, host: str, port: int, processes: int = 1) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get the shutdown timeout to finish.

    With ``processes > 1`` this process only supervises: N gateway processes bind the same
    port with SO_REUSEPORT and the kernel spreads connections over them (one event loop
    per core). If one dies, the others are stopped too and the exit status says so, so the
    service manager restarts the whole set rather than running silently short. They keep
    their metrics in a directory of their own (prometheus-client's multiprocess mode), so
    that a scrape answered by any of them shows the whole gateway; it is removed at exit.
    """
    # Fail before serving, with one line (ConfigError), on what an operator can fix.
    _check_port(host, port)
    tls_context(settings)
    run(_check_store(settings))
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
