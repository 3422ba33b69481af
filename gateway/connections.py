"""Connections, before any request reaches the app: deadlines, a per-address cap, safe errors.

aiohttp has no deadline for a request's headers and no limit on connections, so a client
trickling header or body bytes keeps a connection (and a file descriptor) forever.
`ConnectionGuard` tracks every connection of a gateway process:

- a connection must deliver a request's headers within ``header_timeout`` seconds of
  opening (or of finishing its previous request), else it is closed;
- each client address (a TCP peer; trusted proxies are exempt) holds at most
  ``max_per_address`` connections: one over the cap
  closes one of that address's connections that is not in a request (the oldest draining an
  unread body after its answer, else waiting for headers, else idle) rather than refusing
  the new one, so a caller that
  sends a request at once is served even while the same address holds many slow ones. A
  connection that carried an authenticated call (the right secret) is never the one
  closed, and neither is one whose request has fully arrived but waits for the loop, so a
  caller at an attacking address keeps its keep-alive connection;
- the body's deadline is the handler's (`gateway.hook` reads it within ``body_timeout``).

`GuardedRequestHandler` also answers a request the HTTP parser refused (a request line
over 8 KB, a malformed header) with the gateway's JSON error, without echoing the
request (its target may hold a secret), and logs one line instead of a traceback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.errors import json_response
from gateway.keys import AUTHENTICATED
from shared.http import SERVER_NAME
from shared.settings import Network

__all__ = [
    "ConnectionGuard",
    "GuardedRequestHandler",
    "GuardedSite",
    "connection_middleware",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = structlog.get_logger("triggers.gateway")


class _Connection:
    __slots__ = ("address", "deadline", "phase", "timer", "timer_at", "trusted")

    def __init__(self, address: str) -> None:
        self.address = address
        # "headers": a request is on its way; "queued": its headers arrived, the app has
        # not started it yet; "busy": the app has it; "idle": between requests;
        # "draining": answered without reading its body (closed soon).
        self.phase = "headers"
        # When the current phase's deadline passes (loop time), or None: no deadline.
        self.deadline: float | None = None
        # The timer that checks the deadline, and when it fires: it is moved only when the
        # deadline comes earlier; a later deadline is checked when it fires, so a request
        # on a keep-alive connection only stores a float (no timer made and cancelled).
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        # It carried an authenticated call: kept when its address goes over the cap.
        self.trusted = False


class ConnectionGuard:
    """Every open connection of this process, by address, with its deadline."""

    def __init__(
        self,
        *,
        header_timeout: float,
        idle_timeout: float,
        max_per_address: int,
        exempt: tuple[Network, ...] = (),
    ) -> None:
        self._header_timeout = header_timeout
        # Trusted proxies carry many callers' connections: the cap is not theirs.
        self._exempt = exempt
        self._idle_timeout = idle_timeout
        self._max_per_address = max_per_address
        self._open: dict[RequestHandler, _Connection] = {}
        # Insertion order is opening order: the first one not busy is the oldest idle one.
        self._by_address: dict[str, dict[RequestHandler, None]] = {}
        self.closed_slow = 0
        self.closed_over_cap = 0

    def opened(self, handler: RequestHandler, address: str) -> None:
        """A connection was accepted: start its header deadline, enforce the cap."""
        connection = _Connection(address)
        self._open[handler] = connection
        peers = self._by_address.setdefault(address, {})
        peers[handler] = None
        self._arm(handler, connection, self._header_timeout)
        if (
            self._max_per_address > 0
            and len(peers) > self._max_per_address
            and not self._is_exempt(address)
        ):
            victim = self._victim(peers)
            if victim is not None:
                self.closed_over_cap += 1
                _close(victim)

    def _victim(self, peers: dict[RequestHandler, None]) -> RequestHandler | None:
        # Oldest first within each phase: connections draining an unread body after their
        # answer, then those still sending headers, then idle keep-alive ones (a caller's
        # pooled connection goes last, so its next call is not cut off).
        # A connection that proved a secret is never chosen: the new one (waiting for its
        # headers, the newest) is closed rather than a known caller's.
        for phase in ("draining", "headers", "idle"):
            for handler in peers:
                connection = self._open[handler]
                if connection.phase == phase and not connection.trusted:
                    return handler
        return None

    def _is_exempt(self, address: str) -> bool:
        if not self._exempt:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._exempt)

    def closed(self, handler: RequestHandler) -> None:
        """A connection is gone."""
        connection = self._open.pop(handler, None)
        if connection is None:
            return
        if connection.timer is not None:
            connection.timer.cancel()
        peers = self._by_address.get(connection.address)
        if peers is not None:
            peers.pop(handler, None)
            if not peers:
                del self._by_address[connection.address]

    def received(self, handler: RequestHandler) -> None:
        """Bytes arrived: on an idle connection they start a request, whose headers get a deadline."""
        connection = self._open.get(handler)
        if connection is not None and connection.phase == "idle":
            connection.phase = "headers"
            self._arm(handler, connection, self._header_timeout)

    def parsed(self, handler: RequestHandler) -> None:
        """A request's headers have all arrived (it waits for the app): no deadline, no victim."""
        connection = self._open.get(handler)
        if connection is not None and connection.phase == "headers":
            connection.phase = "queued"
            connection.deadline = None

    def request_started(self, handler: object) -> None:
        """Its headers arrived: the handler's own deadlines apply from now."""
        connection = self._open.get(handler)  # type: ignore[call-overload] # any protocol object
        if connection is not None:
            connection.phase = "busy"
            connection.deadline = None

    def request_finished(
        self, handler: object, *, draining: bool = False, authenticated: bool = False
    ) -> None:
        """Answered: the connection may stay open, idle, for the keep-alive time.

        `draining`: the body was not read (refused before it); aiohttp reads and drops the
        rest for up to two seconds before closing. `authenticated`: the call proved a
        secret, so the connection is a known caller's from now on.
        """
        connection = self._open.get(handler)  # type: ignore[call-overload] # any protocol object
        if connection is not None and isinstance(handler, RequestHandler):
            connection.trusted = connection.trusted or authenticated
            connection.phase = "draining" if draining else "idle"
            self._arm(handler, connection, self._idle_timeout)

    def _arm(self, handler: RequestHandler, connection: _Connection, seconds: float) -> None:
        if seconds <= 0:
            connection.deadline = None
            return
        loop = asyncio.get_running_loop()
        deadline = connection.deadline = loop.time() + seconds
        if connection.timer is None or connection.timer_at > deadline:
            if connection.timer is not None:
                connection.timer.cancel()
            connection.timer = loop.call_at(deadline, self._check, handler)
            connection.timer_at = deadline

    def _check(self, handler: RequestHandler) -> None:
        """The timer fired: expire the connection if its deadline passed, else wait on."""
        connection = self._open.get(handler)
        if connection is None:
            return
        connection.timer = None
        deadline = connection.deadline
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        # A timer may fire a little early (uvloop's clock is in milliseconds).
        if loop.time() + 0.001 < deadline:
            connection.timer = loop.call_at(deadline, self._check, handler)
            connection.timer_at = deadline
            return
        self._expire(handler)

    def _expire(self, handler: RequestHandler) -> None:
        connection = self._open.get(handler)
        if connection is not None and connection.phase != "busy":
            if connection.phase == "headers":
                self.closed_slow += 1
            _close(handler)


def _close(handler: RequestHandler) -> None:
    handler.force_close()
    if handler.transport is not None:
        handler.transport.close()


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol, reporting to a `ConnectionGuard` and answering parser errors in JSON."""

    __slots__ = ("_guard",)

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the guard (which may close an idle connection of the same address)."""
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else "unknown"
        self._guard.opened(self, str(address))

    def connection_lost(self, exc: BaseException | None) -> None:
        """Unregister."""
        self._guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Tell the guard, then parse as aiohttp does (and tell it when a request is whole)."""
        self._guard.received(self)
        super().data_received(data)
        if self._messages:
            self._guard.parsed(self)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A JSON error that quotes nothing of the request; one log line, no traceback."""
        log.info(
            "gateway.bad_http_request",
            status=status,
            error=type(exc).__name__ if exc is not None else None,
            remote=request.remote,
        )
        if request.writer.output_size > 0:
            msg = "response already started"
            raise ConnectionError(msg)
        if status >= 500:
            body = {"error": "internal_error", "detail": "unexpected error; it has been logged"}
        else:
            body = {
                "error": "bad_http_request",
                "detail": "the request is not valid HTTP or exceeds the gateway's limits "
                "(request line and each header at most 8190 bytes)",
            }
        # Built outside the app, so no app signal names the server: say it here.
        response = json_response(body, status=status, headers={hdrs.SERVER: SERVER_NAME})
        response.force_close()
        return response


class GuardedSite(web.TCPSite):
    """A TCP site whose connections are `GuardedRequestHandler`s of one guard."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard,
        handler_args: dict[str, Any],
        reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, host, port, reuse_port=reuse_port or None, ssl_context=ssl_context)
        self._guard = guard
        self._handler_args = handler_args

    async def start(self) -> None:
        """Listen, building each connection's protocol here instead of in `web.Server`."""
        await web.BaseSite.start(self)
        server = self._runner.server
        if server is None:
            msg = "the runner is not set up"
            raise RuntimeError(msg)
        loop = asyncio.get_running_loop()

        def protocol() -> GuardedRequestHandler:
            return GuardedRequestHandler(server, loop=loop, guard=self._guard, **self._handler_args)

        # Several addresses may be given, separated by commas (``127.0.0.1,::1``).
        hosts = [h.strip() for h in (self._host or "").split(",") if h.strip()] or None
        self._server = await loop.create_server(
            protocol,
            hosts,
            self._port,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl=self._ssl_context,  # --tls-cert/--tls-key, else plain HTTP
        )


def connection_middleware(guard: ConnectionGuard) -> Callable[..., Any]:
    """Tell `guard` when a connection's request is in the app (outermost middleware)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        guard.request_started(request.protocol)
        try:
            return await handler(request)
        finally:
            draining = request.body_exists and not request.content.is_eof()
            guard.request_finished(
                request.protocol,
                draining=draining,
                authenticated=request.get(AUTHENTICATED, False),
            )

    return middleware
