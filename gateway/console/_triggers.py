"""The console's trigger pages: the list, the form to create one, a trigger's details with
its recent calls, and the policy, rotate and revoke actions.

Data goes through `shared.admin.StoreAdmin`, as the admin API and the CLI do.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import structlog
from aiohttp import web
from multidict import MultiDictProxy

from gateway.console._auth import render, see_other
from gateway.keys import AUDIT, SETTINGS, STORE, TRIGGER_CACHE
from shared.admin import AdminError, ListFilter, StoreAdmin
from shared.api import DEFAULT_GRACE, TriggerCreate, TriggerView
from shared.describe import curl_lines, policy_summary
from shared.policy import PolicyChanges

__all__ = [
    "create_trigger",
    "new_trigger",
    "revoke_trigger",
    "rotate_trigger",
    "trigger",
    "triggers",
    "update_policy",
]

log = structlog.get_logger("triggers.console")

_TRIGGER_ID = re.compile(r"^[a-z0-9]{8,64}$")


def _admin(request: web.Request) -> StoreAdmin:
    return StoreAdmin(request.app[STORE], request.app[SETTINGS].public_url)


async def triggers(request: web.Request) -> web.StreamResponse:
    """GET /ui/triggers: every trigger with its status and policy."""
    show = request.query.get("status", "")
    selection = ListFilter(
        status=show if show in ("active", "disabled", "expired") else None,  # type: ignore[arg-type]  # checked against the literal's values
        include_revoked=show in ("all", "revoked"),
        limit=1000,
    )
    found = (await _admin(request).list(selection)).triggers
    if show == "revoked":
        found = [view for view in found if view.status == "revoked"]
    return render(
        request,
        "triggers.html",
        triggers=[(view, policy_summary(view)) for view in found],
        show=show,
    )


async def new_trigger(request: web.Request) -> web.StreamResponse:
    """GET /ui/triggers/new: the form to create a trigger."""
    return render(request, "trigger_new.html", values={}, error=None)


def _number(form: MultiDictProxy[str], key: str) -> int | str | None:
    value = form.get(key, "").strip()
    if not value:
        return None
    return int(value) if re.fullmatch(r"[0-9]{1,9}", value) else value


def _policy(form: MultiDictProxy[str]) -> dict[str, Any]:
    """The policy fields of a form; an empty box means no limit."""
    methods = [m for m in ("GET", "POST") if m in form.getall("allowed_methods", [])]
    policy: dict[str, Any] = {
        key: _number(form, key)
        for key in ("min_replicas", "max_replicas", "cooldown", "rate_limit")
    }
    policy["allowed_methods"] = methods or ["GET", "POST"]
    policy["request_id_idempotency"] = form.get("request_id_idempotency") == "on"
    return policy


def _secret_page(
    request: web.Request, view: TriggerView, headline: str, status: int = 200
) -> web.Response:
    """The URL and secret of a trigger, shown this once, with its curl lines."""
    return render(
        request, "secret.html", status=status, view=view, headline=headline, curl=curl_lines(view)
    )


async def create_trigger(request: web.Request, form: MultiDictProxy[str]) -> web.StreamResponse:
    """POST /ui/triggers: create; the page shows the URL and secret once."""
    data: dict[str, Any] = {
        "cluster": form.get("cluster", "").strip(),
        "app": form.get("app", "").strip(),
        "action": form.get("action", ""),
        "service": form.get("service", "").strip() or None,
        "image_update": form.get("image_update") == "on",
        **{k: v for k, v in _policy(form).items() if v is not None},
    }
    expires_in = _number(form, "expires_in")
    if expires_in is not None:
        data["expires_in"] = expires_in
    try:
        created = await _admin(request).create(msgspec.convert(data, TriggerCreate))
    except msgspec.ValidationError as exc:
        error = str(exc)
    except AdminError as exc:
        error = exc.detail
    else:
        log.info("console.trigger_created", trigger_id=created.id, action=created.action)
        return _secret_page(request, created, "Trigger created", status=201)
    return render(request, "trigger_new.html", status=422, values=dict(form), error=error)


async def _trigger_page(
    request: web.Request, trigger_id: str, *, status: int = 200, **context: Any
) -> web.Response:
    admin = _admin(request)
    try:
        view = await admin.get(trigger_id)
    except AdminError:
        return render(request, "missing.html", status=404, what=f"trigger {trigger_id[:64]}")
    await request.app[AUDIT].flush()
    calls = (await admin.audit(trigger_id=trigger_id, limit=20)).entries
    context.setdefault("error", None)
    return render(
        request,
        "trigger.html",
        status=status,
        view=view,
        policy=policy_summary(view),
        calls=calls,
        grace=DEFAULT_GRACE,
        **context,
    )


def _trigger_id(request: web.Request) -> str:
    trigger_id = request.match_info["trigger_id"]
    return trigger_id if _TRIGGER_ID.match(trigger_id) else "-"


async def trigger(request: web.Request) -> web.StreamResponse:
    """GET /ui/triggers/{id}: details, recent calls, policy, rotate and revoke."""
    done = request.query.get("done")
    return await _trigger_page(
        request, _trigger_id(request), done=done if done in ("updated", "revoked") else None
    )


def _changed(request: web.Request, trigger_id: str, what: str) -> None:
    # This gateway forgets its cached copy at once; the others through the store's change
    # feed (gateway/invalidation.py).
    request.app[TRIGGER_CACHE].invalidate(trigger_id)
    log.info("console.trigger_changed", trigger_id=trigger_id, change=what)


async def update_policy(request: web.Request, form: MultiDictProxy[str]) -> web.StreamResponse:
    """POST /ui/triggers/{id}/policy: the policy as a whole; empty boxes clear limits."""
    trigger_id = _trigger_id(request)
    data = _policy(form)
    data["enabled"] = form.get("enabled") == "on"
    expires = form.get("expires_at", "").strip()
    data["expires_at"] = expires or None
    try:
        changes = msgspec.convert(data, PolicyChanges, strict=False)
        await _admin(request).update(trigger_id, changes)
    except msgspec.ValidationError as exc:
        return await _trigger_page(request, trigger_id, status=422, error=str(exc))
    except AdminError as exc:
        if exc.status == 404:
            return render(request, "missing.html", status=404, what=f"trigger {trigger_id}")
        return await _trigger_page(request, trigger_id, status=exc.status, error=exc.detail)
    _changed(request, trigger_id, "policy")
    return see_other(f"/ui/triggers/{trigger_id}?done=updated")


async def rotate_trigger(request: web.Request, form: MultiDictProxy[str]) -> web.StreamResponse:
    """POST /ui/triggers/{id}/rotate: a new secret now, the old one for the grace."""
    trigger_id = _trigger_id(request)
    grace = _number(form, "grace")
    if not isinstance(grace, int) or grace > 7 * 24 * 3600:
        return await _trigger_page(
            request, trigger_id, status=422, error="grace must be 0 to 604800 seconds"
        )
    try:
        view = await _admin(request).rotate(trigger_id, grace)
    except AdminError as exc:
        if exc.status == 404:
            return render(request, "missing.html", status=404, what=f"trigger {trigger_id}")
        return await _trigger_page(request, trigger_id, status=exc.status, error=exc.detail)
    _changed(request, trigger_id, "rotate")
    return _secret_page(request, view, "Secret rotated")


async def revoke_trigger(request: web.Request, form: MultiDictProxy[str]) -> web.StreamResponse:
    """POST /ui/triggers/{id}/revoke: asks first; revokes once confirmed."""
    trigger_id = _trigger_id(request)
    admin = _admin(request)
    try:
        if form.get("confirm") != "yes":
            return render(request, "revoke.html", view=await admin.get(trigger_id))
        await admin.revoke(trigger_id)
    except AdminError:
        return render(request, "missing.html", status=404, what=f"trigger {trigger_id}")
    _changed(request, trigger_id, "revoke")
    return see_other(f"/ui/triggers/{trigger_id}?done=revoked")
