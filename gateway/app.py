"""The gateway's app factory and runner."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from cachetools import TTLCache

from gateway.abuse import FailedAuthLimiter
from gateway.errors import error_middleware
from gateway.hook import handle_trigger
from gateway.keys import AUTH_LIMITER, BUS, RECENT_EVENTS, SETTINGS, STORE, TRIGGER_CACHE
from gateway.recent import RecentEvents
from shared.bus import AmqpBus, Bus
from shared.settings import Settings
from shared.store import TriggerStore, open_store

__all__ = ["create_app", "run_gateway"]

log = structlog.get_logger("triggers.gateway")


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    if request.app[BUS].ready:
        return web.json_response({"status": "ready", "broker": "up"})
    return web.json_response(
        {"status": "unready", "broker": "down"}, status=503, headers={"Retry-After": "5"}
    )


def create_app(
    settings: Settings, *, store: TriggerStore | None = None, bus: Bus | None = None
) -> web.Application:
    """The gateway application. Resources not passed in are opened from the settings.

    A bus passed in is used as it is (its owner starts and closes it); one opened here
    connects in the background, so the gateway starts and answers 503 while RabbitMQ is
    down, and recovers by itself.
    """
    # The body limit is enforced by aiohttp itself as well as by the handler.
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[TRIGGER_CACHE] = TTLCache(maxsize=10_000, ttl=settings.trigger_cache_ttl)
    app[AUTH_LIMITER] = FailedAuthLimiter(settings.auth_failures_per_minute)
    app[RECENT_EVENTS] = RecentEvents()

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        app[STORE] = store if store is not None else open_store(settings.database)
        yield
        if store is None:
            await app[STORE].close()

    async def bus_ctx(app: web.Application) -> AsyncIterator[None]:
        if bus is not None:
            app[BUS] = bus
            yield
            return
        owned = AmqpBus.from_settings(settings, "gateway")
        owned.start_in_background()
        app[BUS] = owned
        yield
        await owned.close()

    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(bus_ctx)
    app.router.add_route("GET", "/hook/trigger", handle_trigger)
    app.router.add_route("POST", "/hook/trigger", handle_trigger)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


def run_gateway(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get the shutdown timeout to finish."""
    log.info("gateway.starting", host=host, port=port, database=settings.database.split("://")[0])
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        access_log=None,  # the access log would print query strings, and so secrets
        shutdown_timeout=settings.shutdown_timeout,
        print=None,
    )
