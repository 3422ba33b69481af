"""Console sign-in: the admin token for a session cookie; CSRF checks on every change.

- Sign-in trades `TRIGGERS_ADMIN_TOKEN` for a session cookie: HttpOnly (no script reads
  it), SameSite=Strict (no other site's page sends it), scoped to ``/ui``, with an expiry
  (`TRIGGERS_CONSOLE_SESSION_TTL`); `Secure` when the console is reached over HTTPS.
  Failed attempts count toward the gateway's limit on failed authentications per address.
- Every state-changing request (a POST) needs the session's CSRF token, a keyed digest of
  the session token sent in a hidden form field or the ``X-CSRF-Token`` header, and must
  not come from another origin (``Origin``, ``Sec-Fetch-Site``). The sign-in form has its
  own token, doubled in a short-lived cookie, so a foreign page cannot sign a browser in.
- Without a session every page answers 401 with the sign-in form and no data; the event
  stream and the changes answer 401 JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import structlog
from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from gateway.console._keys import SESSION, SESSIONS, TEMPLATES
from gateway.errors import ApiError
from gateway.keys import AUTH_LIMITER, SETTINGS

__all__ = [
    "COOKIE",
    "FormHandler",
    "Handler",
    "action",
    "csrf_token",
    "page",
    "render",
    "secured",
    "see_other",
    "sign_in",
    "sign_out",
    "stream",
]

log = structlog.get_logger("triggers.console")

COOKIE = "triggers_console"
_LOGIN_COOKIE = "triggers_console_login"
_PATH = "/ui"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# No inline script or style and nothing from elsewhere: an injected tag would do nothing.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Job and trigger ids are in console URLs: they stay on this site.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def secured(response: web.StreamResponse) -> web.StreamResponse:
    """The console's security headers on a response."""
    response.headers.update(_SECURITY_HEADERS)
    return response


def csrf_token(session: str) -> str:
    """The session's CSRF token: only someone holding the session cookie can know it."""
    return hmac.new(session.encode(), b"console-csrf", hashlib.sha256).hexdigest()


def _https(request: web.Request) -> bool:
    return request.secure or request.app[SETTINGS].public_url.startswith("https://")


def render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    """A console page: the template with the session's CSRF token, securely served."""
    session = request.get(SESSION)
    html = (
        request.app[TEMPLATES]
        .get_template(template)
        .render(
            csrf=csrf_token(session) if session else "",
            signed_in=session is not None,
            path=request.path,
            **context,
        )
    )
    response = web.Response(text=html, status=status, content_type="text/html")
    secured(response)
    return response


def see_other(path: str) -> web.Response:
    """303 to `path`: after an action, the browser loads the page that shows its effect."""
    return web.Response(status=303, headers={"Location": path})


def _safe_next(target: str | None) -> str:
    # Only a console path: a sign-in link must not send the browser elsewhere.
    if target and target.startswith(_PATH) and "//" not in target and "\\" not in target:
        return target
    return _PATH


def _sign_in_page(
    request: web.Request, *, status: int = 401, error: str | None = None
) -> web.Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "signin.html",
        status=status,
        error=error,
        login_csrf=token,
        next=_safe_next(request.path_qs if request.method == "GET" else None),
        enabled=bool(request.app[SETTINGS].admin_token),
    )
    response.set_cookie(
        _LOGIN_COOKIE,
        token,
        max_age=3600,
        path=_PATH,
        httponly=True,
        samesite="Strict",
        secure=_https(request),
    )
    return response


async def _session(request: web.Request) -> str | None:
    """The request's session token when it is a live session, else None."""
    admin_token = request.app[SETTINGS].admin_token
    token = request.cookies.get(COOKIE)
    if not admin_token or not token or len(token) > 128:
        return None
    if not await request.app[SESSIONS].valid(token, admin_token):
        return None
    request[SESSION] = token
    return token


def _same_origin(request: web.Request) -> bool:
    """Whether a state-changing request may come from a console page of this gateway.

    Defence in depth beside the CSRF token: a browser says where a request comes from.
    A client that sends neither header (not a browser) is left to the token.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    own = (f"{request.scheme}://{request.host}", request.app[SETTINGS].public_url.rstrip("/"))
    return origin in own


def _csrf_refused(detail: str) -> ApiError:
    return ApiError(403, "csrf_refused", detail)


def page(handler: Handler) -> Handler:
    """A console page (GET): the sign-in form, 401, unless the request has a session."""

    async def route(request: web.Request) -> web.StreamResponse:
        if await _session(request) is None:
            return _sign_in_page(request)
        return secured(await handler(request))

    route.__doc__ = handler.__doc__
    return route


def stream(handler: Handler) -> Handler:
    """A console data stream (GET): 401 JSON without a session."""

    async def route(request: web.Request) -> web.StreamResponse:
        if await _session(request) is None:
            raise ApiError(401, "unauthorized", "sign in to the console at /ui first")
        return await handler(request)

    route.__doc__ = handler.__doc__
    return route


async def _form(request: web.Request) -> MultiDictProxy[str]:
    # Console forms have text fields only; an uploaded file is not taken.
    posted = await request.post()
    return MultiDictProxy(MultiDict((k, v) for k, v in posted.items() if isinstance(v, str)))


FormHandler = Callable[[web.Request, MultiDictProxy[str]], Awaitable[web.StreamResponse]]


def action(handler: FormHandler) -> Handler:
    """A console change (POST): a session, the same origin and the session's CSRF token."""

    async def route(request: web.Request) -> web.StreamResponse:
        session = await _session(request)
        if session is None:
            raise ApiError(401, "unauthorized", "sign in to the console at /ui first")
        if not _same_origin(request):
            log.warning("console.csrf_refused", reason="origin", path=request.path)
            raise _csrf_refused("a change must come from a console page of this gateway")
        form = await _form(request)
        given = form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
        if not hmac.compare_digest(given.encode(), csrf_token(session).encode()):
            log.warning("console.csrf_refused", reason="token", path=request.path)
            raise _csrf_refused("the form's CSRF token is missing or wrong; reload the page")
        return secured(await handler(request, form))

    route.__doc__ = handler.__doc__
    return route


async def sign_in(request: web.Request) -> web.StreamResponse:
    """POST /ui/login: the admin token for a session cookie."""
    settings = request.app[SETTINGS]
    if not settings.admin_token:
        return _sign_in_page(request, status=403)
    if not _same_origin(request):
        raise _csrf_refused("sign in from the console's own page")
    form = await _form(request)
    expected = request.cookies.get(_LOGIN_COOKIE, "")
    given = form.get("login_csrf", "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise _csrf_refused("the sign-in form expired or came from elsewhere; reload /ui")
    limiter = request.app[AUTH_LIMITER]
    address = request.remote or "unknown"
    if limiter.blocked_for(address):
        return _sign_in_page(request, status=429, error="Too many failed attempts; wait a minute.")
    token = form.get("token", "")
    if not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        limiter.failed(address)
        log.warning("console.sign_in_failed", remote=address)
        return _sign_in_page(request, error="That is not the admin token.")
    session, expires = await request.app[SESSIONS].open(
        settings.admin_token,
        timedelta(seconds=settings.console_session_ttl),
        remote=address,
        user_agent=request.headers.get("User-Agent", "")[:200] or None,
    )
    log.info("console.signed_in", remote=address)
    response = web.Response(status=303, headers={"Location": _safe_next(form.get("next"))})
    response.set_cookie(
        COOKIE,
        session,
        max_age=int(settings.console_session_ttl),
        expires=expires.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        path=_PATH,
        httponly=True,
        samesite="Strict",
        secure=_https(request),
    )
    response.del_cookie(_LOGIN_COOKIE, path=_PATH)
    return secured(response)


async def sign_out(request: web.Request, form: MultiDictProxy[str]) -> web.StreamResponse:
    """POST /ui/logout: end the session here and on every gateway."""
    await request.app[SESSIONS].close_session(request[SESSION])
    log.info("console.signed_out", remote=request.remote)
    response = web.Response(status=303, headers={"Location": _PATH})
    response.del_cookie(COOKIE, path=_PATH)
    return response
