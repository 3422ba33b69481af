"""The web console at ``/ui``: live results, jobs, triggers, dead letters, charts.

`add_console` registers its routes and resources on the gateway application. Pages are
server-rendered with Jinja2 templates shipped in the package, with a little JavaScript
and CSS served from ``/ui/static/`` (nothing is fetched from elsewhere, and nothing is
built at install time). Sign-in, sessions and CSRF are in `_auth`, the live stream in
`_live`, the pages in `_pages` and `_triggers`.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib import resources

import jinja2
from aiohttp import web

from gateway.console import _auth, _pages, _triggers
from gateway.console._keys import LIVE, SESSIONS, TEMPLATES
from gateway.console._live import LiveResults
from gateway.keys import SETTINGS
from shared.describe import origin_text
from shared.jobs import progress_text
from shared.sessions import open_sessions

__all__ = ["add_console", "templates"]

_PACKAGE = "gateway.console"
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def _utc(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return value.astimezone(UTC).strftime(fmt) if value else "-"


def templates() -> jinja2.Environment:
    """The console's template environment (autoescaped HTML)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(_PACKAGE, "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = _utc
    env.filters["hms"] = lambda value: _utc(value, "%H:%M:%S")
    env.filters["origin"] = lambda source: origin_text(source).removeprefix("via ")
    env.filters["progress"] = lambda notice: progress_text(notice.progress, notice.service)
    env.filters["iso"] = lambda value: value.astimezone(UTC).isoformat() if value else ""
    return env


def _static() -> dict[str, tuple[bytes, str, str]]:
    """The static files, read once: body, content type and ETag by name."""
    files = {}
    for entry in resources.files(_PACKAGE).joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if suffix in _STATIC_TYPES:
            body = entry.read_bytes()
            files[entry.name] = (body, _STATIC_TYPES[suffix], hashlib.sha256(body).hexdigest()[:16])
    return files


def add_console(app: web.Application) -> None:
    """Serve the console under ``/ui`` on the gateway `app` (its routes and resources)."""
    env = templates()
    row = env.get_template("_row.html")
    app[TEMPLATES] = env
    running = env.get_template("_running_row.html")
    app[LIVE] = LiveResults(
        lambda event: row.render(event=event),
        lambda notice: running.render(notice=notice),
    )
    static = _static()

    async def sessions_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSIONS] = open_sessions(app[SETTINGS].database)
        yield
        await app[SESSIONS].close()

    async def end_streams(app: web.Application) -> None:
        # Open event streams would hold the graceful shutdown for its whole timeout.
        app[LIVE].close()

    async def serve_static(request: web.Request) -> web.StreamResponse:
        found = static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound
        body, content_type, etag = found
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(
            body=body,
            content_type=content_type,
            headers={
                "ETag": etag,
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
            },
        )

    app.cleanup_ctx.append(sessions_ctx)
    app.on_shutdown.append(end_streams)
    router = app.router
    router.add_get("/ui", _auth.page(_pages.live), allow_head=False)
    router.add_post("/ui/login", _auth.sign_in)
    router.add_post("/ui/logout", _auth.action(_auth.sign_out))
    router.add_get("/ui/events", _auth.stream(_pages.events), allow_head=False)
    router.add_get("/ui/jobs", _auth.page(_pages.jobs), allow_head=False)
    router.add_get("/ui/jobs/{job_id}", _auth.page(_pages.job), allow_head=False)
    router.add_get("/ui/triggers", _auth.page(_triggers.triggers), allow_head=False)
    router.add_post("/ui/triggers", _auth.action(_triggers.create_trigger))
    router.add_get("/ui/triggers/new", _auth.page(_triggers.new_trigger), allow_head=False)
    router.add_get("/ui/triggers/{trigger_id}", _auth.page(_triggers.trigger), allow_head=False)
    router.add_post("/ui/triggers/{trigger_id}/policy", _auth.action(_triggers.update_policy))
    router.add_post("/ui/triggers/{trigger_id}/rotate", _auth.action(_triggers.rotate_trigger))
    router.add_post("/ui/triggers/{trigger_id}/revoke", _auth.action(_triggers.revoke_trigger))
    router.add_get("/ui/dead-letters", _auth.page(_pages.dead_letters), allow_head=False)
    router.add_post("/ui/dead-letters/replay", _auth.action(_pages.replay))
    router.add_get("/ui/charts", _auth.page(_pages.charts), allow_head=False)
    router.add_get("/ui/approvals", _auth.page(_pages.approvals), allow_head=False)
    router.add_post("/ui/approvals/{job_id}/{decision:approve|reject}", _auth.action(_pages.decide))
    router.add_get("/ui/static/{name}", serve_static, allow_head=False)
