"""The HTTP ceiling: an aiohttp handler that does nothing, on the same loop as the gateway.

``python -m bench.noop PORT`` serves ``GET /`` with SO_REUSEPORT, so several copies share
one port exactly like ``triggers gateway --processes N``.
"""

from __future__ import annotations

import sys

from aiohttp import web

from shared.loop import new_event_loop

__all__ = ["main", "serve"]


async def _noop(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def serve(app: web.Application, port: int) -> None:
    """Serve `app` on 127.0.0.1:`port` (SO_REUSEPORT, uvloop, no access log) until SIGTERM."""
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        reuse_port=True,
        access_log=None,
        print=None,
        loop=new_event_loop(),
    )


def main() -> None:
    """Serve until SIGTERM."""
    app = web.Application()
    app.router.add_get("/", _noop)
    serve(app, int(sys.argv[1]))


if __name__ == "__main__":
    main()
