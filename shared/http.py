"""What every HTTP listener of ours says about itself: a name, no versions.

aiohttp answers ``Server: Python/3.x aiohttp/3.x`` by default, which tells a scanner which
known vulnerabilities to try; our listeners (the gateway, and every ``/metrics`` port) name
the product only.
"""

from __future__ import annotations

from aiohttp import hdrs, web

__all__ = ["SERVER_NAME", "name_server"]

SERVER_NAME = "container-triggers"


async def _name(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER_NAME


def name_server(app: web.Application) -> None:
    """Answer every response of `app` with ``Server: container-triggers``."""
    app.on_response_prepare.append(_name)
