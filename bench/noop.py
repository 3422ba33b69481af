"""The HTTP ceiling: an aiohttp handler that does nothing, on the same loop as the gateway.

``python -m bench.noop PORT`` serves ``GET /`` with SO_REUSEPORT, so several copies share
one port exactly like ``triggers gateway --processes N``.
"""

from __future__ import annotations

import sys

from aiohttp import web

from shared.loop import new_event_loop

__all__ = ["main"]


async def _noop(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def main() -> None:
    """Serve until SIGTERM."""
    app = web.Application()
    app.router.add_get("/", _noop)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        reuse_port=True,
        access_log=None,
        print=None,
        loop=new_event_loop(),
    )


if __name__ == "__main__":
    main()
