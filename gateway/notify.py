"""Approvals and notifications on the gateway.

- A call to a trigger with ``approvals`` is kept in the store (not in memory) and
  announced with a ``pending_approval`` notice instead of being published
  (`gateway.calls`); the caller gets 202 with ``"status": "pending_approval"``.
- The admin API for sinks (``/v1/sinks``), global routes (``/v1/routes``) and approvals
  (``/v1/approvals``, ``.../approve``, ``.../reject``), behind the admin token.
- The page an approval link in a notification opens (``/approvals/link?token=``): it
  shows the call and asks for a name; only the form's POST decides, so link previews
  (Slack and Teams fetch links they post) cannot approve anything. A link is signed,
  expires with the call and works once; the name given is recorded as the approver.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from gateway.admin import _body, _json, require_admin
from gateway.errors import ApiError
from gateway.keys import BUS, JOBS, SETTINGS, STORE
from shared.admin import AdminError
from shared.approvals import Decisions, LinkClaims, approval_view, verify_link
from shared.notify_admin import ApproveRequest, RejectRequest, StoreNotifyAdmin
from shared.notify_store import NotifyStore, RouteCreate, SinkCreate, open_notify_store

__all__ = ["NOTIFY", "add_notify_routes", "notify_admin"]

log = structlog.get_logger("triggers.gateway")

NOTIFY = web.AppKey("notify", NotifyStore)
_JOB_REF = re.compile(r"^[0-9a-f]{4,32}$")
_STATES = ("pending", "approved", "rejected", "expired", "all")


Operation = Callable[[web.Request, StoreNotifyAdmin], Awaitable[web.Response]]


def _admin(operation: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Authorize, run on the store (an `AdminError` is answered by the error middleware)."""

    async def route(request: web.Request) -> web.Response:
        require_admin(request)
        return await operation(request, notify_admin(request))

    route.__doc__ = operation.__doc__
    return route


def notify_admin(request: web.Request) -> StoreNotifyAdmin:
    """The sinks, routes and approvals of this gateway's store (the API's and the console's)."""
    settings = request.app[SETTINGS]
    return StoreNotifyAdmin(
        request.app[NOTIFY],
        request.app[STORE],
        request.app[BUS],
        public_url=settings.public_url,
        jobs=request.app[JOBS],
        smtp_cafile=settings.smtp_cafile,
    )


def _job_ref(request: web.Request) -> str:
    ref = request.match_info["job_id"]
    if not _JOB_REF.match(ref):
        msg = "a job id is 32 lowercase hex characters (a unique prefix of 4 or more will do)"
        raise ApiError(400, "invalid_job_id", msg)
    return ref


async def create_sink(request: web.Request, admin: StoreNotifyAdmin) -> web.Response:
    """POST /v1/sinks: 201 with the sink; a webhook's signing `secret` only now."""
    view = await admin.create_sink(await _body(request, SinkCreate))
    log.info("admin.sink_created", sink=view.name, type=view.type)
    return _json(view, 201, headers={"Location": f"/v1/sinks/{view.name}"})


async def list_sinks(request: web.Request, admin: StoreNotifyAdmin) -> web.Response:
    """GET /v1/sinks."""
    return _json(await admin.list_sinks())


async def delete_sink(request: web.Request, admin: StoreNotifyAdmin) -> web.Response:
    """DELETE /v1/sinks/{name}: the sink and its routes."""
    view = await admin.delete_sink(request.match_info["name"])
    log.info("admin.sink_deleted", sink=view.name)
    return _json(view)


async def test_sink(request: web.Request, admin: StoreNotifyAdmin) -> web.Response:
    """POST /v1/sinks/{name}/test: send a sample now; `delivered` says whether it went."""
    return _json(await admin.test_sink(request.match_info["name"]))


async def add_route(request: web.Request, admin: StoreNotifyAdmin) -> web.Response:
    """POST /v1/routes: 201 with the route."""
    return _json(await admin.add_route(await _body(request, RouteCreate)), 201)


async def list_routes(request: web.Request, admin: StoreNotifyAdmin) -> web.Response:
    """GET /v1/routes."""
    return _json(await admin.list_routes())


async def delete_route(request: web.Request, admin: StoreNotifyAdmin) -> web.Response:
    """DELETE /v1/routes/{id}."""
    text = request.match_info["route_id"]
    if not text.isdigit():
        raise ApiError(404, "route_not_found", f"no route {text[:32]!r}")
    return _json(await admin.delete_route(int(text)))


async def list_approvals(request: web.Request, admin: StoreNotifyAdmin) -> web.Response:
    """GET /v1/approvals?state=pending|approved|rejected|expired|all (default pending)."""
    unknown = sorted(set(request.query) - {"state"})
    if unknown:
        raise ApiError(
            400, "unknown_parameter", f"unknown parameter {unknown[0][:32]!r}; give state"
        )
    state = request.query.get("state", "pending")
    if state not in _STATES:
        raise ApiError(400, "invalid_parameter", f"state must be one of {', '.join(_STATES)}")
    return _json(await admin.list_approvals(None if state == "all" else state))  # type: ignore[arg-type]  # checked against _STATES above


async def get_approval(request: web.Request, admin: StoreNotifyAdmin) -> web.Response:
    """GET /v1/approvals/{job_id}."""
    found = await Decisions(admin.store, request.app[STORE], request.app[BUS]).resolve(
        _job_ref(request)
    )
    return _json(approval_view(found))


async def approve(request: web.Request, admin: StoreNotifyAdmin) -> web.Response:
    """POST /v1/approvals/{job_id}/approve: one approval; the last one needed runs the call."""
    body = await _body(request, ApproveRequest, optional=True)
    return _json(await admin.approve(_job_ref(request), body.approver))


async def reject(request: web.Request, admin: StoreNotifyAdmin) -> web.Response:
    """POST /v1/approvals/{job_id}/reject: the call never runs; its result is `rejected`."""
    body = await _body(request, RejectRequest)
    return _json(await admin.reject(_job_ref(request), body.approver, body.reason))


# --- the page an approval link opens ---------------------------------------------------

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:sans-serif;max-width:40em;margin:2em auto;padding:0 1em}}
label{{display:block;margin:.8em 0 .2em}}input{{width:100%;padding:.4em}}
button{{margin:1em .5em 0 0;padding:.5em 1.2em}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = _PAGE.format(title=html.escape(title), body=body)
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


async def _claims_or_page(request: web.Request, token: str) -> LinkClaims | web.Response:
    key = await request.app[NOTIFY].link_key()
    try:
        return verify_link(key, token)
    except ValueError as exc:
        return _page("Link not usable", f"<p>{html.escape(str(exc))}.</p>", 403)


async def link_page(request: web.Request) -> web.Response:
    """GET /approvals/link?token=: what the call is, and a form to decide (nothing decided)."""
    token = request.query.get("token", "")
    claims = await _claims_or_page(request, token)
    if isinstance(claims, web.Response):
        return claims
    job_id = claims.job_id
    approval = await request.app[NOTIFY].approval(job_id)
    if approval is None:
        return _page("No such call", "<p>This call is not waiting for approval.</p>", 404)
    target = "/".join(
        p for p in (approval.envelope.target.cluster, approval.envelope.target.app,
                    approval.envelope.target.service) if p
    )  # fmt: skip
    facts = (
        f"<p><b>{html.escape(approval.envelope.action)}</b> of <b>{html.escape(target)}</b>"
        f" (job <code>{job_id}</code>) is <b>{approval.state}</b>,"
        f" {len(approval.approvers)} of {approval.required} approvals,"
        f" until {approval.expires_at:%Y-%m-%d %H:%M} UTC.</p>"
    )
    if approval.state != "pending":
        return _page("Already decided", facts)
    form = (
        '<form method="post" action="/approvals/link">'
        f'<input type="hidden" name="token" value="{html.escape(token)}">'
        '<label for="name">Your name (recorded as the approver)</label>'
        '<input id="name" name="name" required maxlength="100">'
        '<label for="reason">Reason (needed to reject)</label>'
        '<input id="reason" name="reason" maxlength="500">'
        '<button name="decision" value="approve">Approve</button>'
        '<button name="decision" value="reject">Reject</button></form>'
    )
    return _page("Approve this change?", facts + form)


async def link_decide(request: web.Request) -> web.Response:
    """POST /approvals/link: decide once with a genuine, unexpired, unused link."""
    form = await request.post()
    token, name = str(form.get("token", "")), str(form.get("name", "")).strip()[:100]
    decision, reason = str(form.get("decision", "")), str(form.get("reason", "")).strip()[:500]
    claims = await _claims_or_page(request, token)
    if isinstance(claims, web.Response):
        return claims
    job_id, sink = claims.job_id, claims.sink
    if not name or decision not in ("approve", "reject") or (decision == "reject" and not reason):
        return _page("Not decided", "<p>Give your name, and a reason to reject.</p>", 400)
    store = request.app[NOTIFY]
    who = f"{name} (link sent to {sink})"
    if not await store.use_link(claims.nonce, job_id, who):
        return _page("Link used", "<p>This link has been used already; it works once.</p>", 409)
    admin = notify_admin(request)
    try:
        if decision == "approve":
            view = await admin.approve(job_id, who)
        else:
            view = await admin.reject(job_id, who, reason)
    except AdminError as exc:
        return _page("Not decided", f"<p>{html.escape(exc.detail)}</p>", exc.status)
    log.info("approvals.link_used", job_id=job_id, sink=sink, decision=decision)
    return _page(
        "Thank you",
        f"<p>Recorded: {html.escape(who)} chose to {decision}. The call is now {view.state}.</p>",
    )


def add_notify_routes(app: web.Application) -> None:
    """The sinks, routes and approvals API and the approval link page, with their store."""

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        app[NOTIFY] = open_notify_store(app[SETTINGS].database)
        await app[NOTIFY].start()
        yield
        await app[NOTIFY].close()

    app.cleanup_ctx.append(store_ctx)
    app.router.add_post("/v1/sinks", _admin(create_sink))
    app.router.add_get("/v1/sinks", _admin(list_sinks), allow_head=False)
    app.router.add_delete("/v1/sinks/{name}", _admin(delete_sink))
    app.router.add_post("/v1/sinks/{name}/test", _admin(test_sink))
    app.router.add_post("/v1/routes", _admin(add_route))
    app.router.add_get("/v1/routes", _admin(list_routes), allow_head=False)
    app.router.add_delete("/v1/routes/{route_id}", _admin(delete_route))
    app.router.add_get("/v1/approvals", _admin(list_approvals), allow_head=False)
    app.router.add_get("/v1/approvals/{job_id}", _admin(get_approval), allow_head=False)
    app.router.add_post("/v1/approvals/{job_id}/approve", _admin(approve))
    app.router.add_post("/v1/approvals/{job_id}/reject", _admin(reject))
    app.router.add_get("/approvals/link", link_page, allow_head=False)
    app.router.add_post("/approvals/link", link_decide)
