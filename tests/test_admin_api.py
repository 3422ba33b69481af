"""The admin API under /v1: every route, the token, bad bodies."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from shared.broker import AmqpBus
from shared.settings import Settings
from shared.store import SqliteTriggerStore
from tests.support.gateways import ADMIN_TOKEN, Gateway


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This module's gateways serve the admin API."""
    return settings.with_(admin_token=ADMIN_TOKEN)


ROUTES = [
    ("POST", "/v1/triggers"),
    ("GET", "/v1/triggers"),
    ("GET", "/v1/triggers/abcdefgh12"),
    ("PATCH", "/v1/triggers/abcdefgh12"),
    ("DELETE", "/v1/triggers/abcdefgh12"),
    ("POST", "/v1/triggers/abcdefgh12/rotate"),
    ("GET", "/v1/audit"),
]

SCALE = {"cluster": "demo", "app": "shop", "action": "scale", "service": "web"}


@pytest.mark.unit
async def test_create_answers_201_with_url_secret_and_policy(gateway: Gateway) -> None:
    """POST /v1/triggers creates a trigger; the answer holds its callable url and secret once."""
    status, body = await gateway.admin(
        "POST",
        "/v1/triggers",
        {**SCALE, "max_replicas": 5, "cooldown": 30, "rate_limit": 20, "namespace": "shop-prod"},
    )
    assert status == 201, body
    assert body["namespace"] == "shop-prod"
    assert body["url"].startswith(f"{gateway.settings.public_url}/hook/trigger?triggerUrl=")
    assert body["url"].endswith(f"&secret={body['secret']}")
    assert len(body["secret"]) == 64
    assert (body["max_replicas"], body["cooldown"], body["rate_limit"]) == (5, 30, 20)
    assert body["status"] == "active"
    assert body["allowed_methods"] == ["GET", "POST"]

    status, shown = await gateway.admin("GET", f"/v1/triggers/{body['id']}")
    assert status == 200
    assert "secret" not in shown
    assert "url" not in shown
    assert {k: v for k, v in body.items() if k not in ("url", "secret")} == shown


@pytest.mark.unit
async def test_list_filters_and_pages(gateway: Gateway) -> None:
    """GET /v1/triggers filters on cluster, app, action and status, and pages with limit/offset."""
    ids = []
    for app, action in (("shop", "redeploy"), ("shop", "scale"), ("blog", "redeploy")):
        body = {"cluster": "demo", "app": app, "action": action}
        if action == "scale":
            body["service"] = "web"
        status, created = await gateway.admin("POST", "/v1/triggers", body)
        assert status == 201, created
        ids.append(created["id"])
    await gateway.admin("DELETE", f"/v1/triggers/{ids[0]}")

    async def listed(query: str) -> list[str]:
        status, body = await gateway.admin("GET", f"/v1/triggers{query}")
        assert status == 200, body
        return [t["id"] for t in body["triggers"]]

    assert await listed("") == [ids[2], ids[1]]
    assert await listed("?status=all") == [ids[2], ids[1], ids[0]]
    assert await listed("?status=revoked") == [ids[0]]
    assert await listed("?app=shop") == [ids[1]]
    assert await listed("?action=redeploy&status=all") == [ids[2], ids[0]]
    status, page = await gateway.admin("GET", "/v1/triggers?limit=1")
    assert [t["id"] for t in page["triggers"]] == [ids[2]]
    assert page["next_offset"] == 1
    assert await listed("?limit=1&offset=1") == [ids[1]]


@pytest.mark.unit
async def test_patch_changes_policy_and_delete_revokes(gateway: Gateway) -> None:
    """PATCH changes only the given fields (null clears); DELETE revokes and is idempotent."""
    _, created = await gateway.admin("POST", "/v1/triggers", {**SCALE, "max_replicas": 5})
    path = f"/v1/triggers/{created['id']}"
    status, patched = await gateway.admin(
        "PATCH", path, {"min_replicas": 1, "enabled": False, "allowed_methods": ["POST"]}
    )
    assert status == 200, patched
    assert (patched["min_replicas"], patched["max_replicas"]) == (1, 5)
    assert (patched["enabled"], patched["status"]) == (False, "disabled")
    assert patched["allowed_methods"] == ["POST"]
    status, cleared = await gateway.admin("PATCH", path, {"max_replicas": None, "enabled": True})
    assert (status, cleared["max_replicas"], cleared["status"]) == (200, None, "active")

    status, revoked = await gateway.admin("DELETE", path)
    assert (status, revoked["status"]) == (200, "revoked")
    status, again = await gateway.admin("DELETE", path)
    assert (status, again["revoked_at"]) == (200, revoked["revoked_at"])
    status, body = await gateway.admin("PATCH", path, {"cooldown": 5})
    assert (status, body["error"]) == (409, "trigger_revoked")


@pytest.mark.unit
async def test_rotate_returns_a_new_url_and_secret(gateway: Gateway) -> None:
    """POST .../rotate answers the new url and secret and when the old one stops working."""
    _, created = await gateway.admin("POST", "/v1/triggers", {**SCALE})
    path = f"/v1/triggers/{created['id']}/rotate"
    status, rotated = await gateway.admin("POST", path, {"grace": 120})
    assert status == 200, rotated
    assert rotated["secret"] != created["secret"]
    assert rotated["url"].endswith(rotated["secret"])
    assert rotated["previous_secret_expires_at"] is not None
    assert rotated["rotated_at"] is not None
    status, default = await gateway.admin("POST", path)
    assert status == 200, default
    await gateway.admin("DELETE", f"/v1/triggers/{created['id']}")
    status, body = await gateway.admin("POST", path, {})
    assert (status, body["error"]) == (409, "trigger_revoked")


@pytest.mark.unit
async def test_audit_route_lists_calls(gateway: Gateway, store: SqliteTriggerStore) -> None:
    """GET /v1/audit lists the calls made, newest first, and filters by trigger and outcome."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    async with gateway.http.get(gateway.call_url(trigger, "0" * 64)) as response:
        assert response.status == 403
    async with gateway.http.get(gateway.call_url(trigger, secret) + "&step=1") as response:
        assert response.status == 400
    status, body = await gateway.admin("GET", f"/v1/audit?trigger_id={trigger.id}")
    assert status == 200, body
    assert [e["reason"] for e in body["entries"]] == ["unexpected_parameter", "forbidden"]
    status, none = await gateway.admin("GET", "/v1/audit?outcome=accepted")
    assert (status, none["entries"]) == (200, [])
    status, page = await gateway.admin("GET", "/v1/audit?limit=1")
    assert len(page["entries"]) == 1
    status, older = await gateway.admin("GET", f"/v1/audit?before={page['next_before']}")
    assert [e["id"] for e in older["entries"]] == [body["entries"][1]["id"]]


@pytest.mark.unit
async def test_unknown_trigger_is_404(gateway: Gateway) -> None:
    """Each route on an id that does not exist answers 404 trigger_not_found."""
    for method, path in ROUTES[2:6]:
        status, body = await gateway.admin(method, path, {} if method != "GET" else None)
        assert (status, body["error"]) == (404, "trigger_not_found"), (method, path)


@pytest.mark.unit
@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_every_route_needs_the_token(
    gateway: Gateway, method: str, path: str, token: str | None
) -> None:
    """Without the bearer token, or with a wrong one, every admin route answers 401."""
    status, body = await gateway.admin(method, path, {}, token=token)
    assert (status, body["error"]) == (401, "unauthorized")


@pytest.mark.unit
async def test_admin_api_is_disabled_without_a_configured_token(
    settings: Settings, store: SqliteTriggerStore, bus: AmqpBus
) -> None:
    """With no TRIGGERS_ADMIN_TOKEN the admin API answers 403 and says how to enable it."""
    app = create_app(settings.with_(admin_token=None), store=store, bus=bus)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.make_url("/v1/triggers")) as response:
                body = await response.json()
                assert response.status == 403
            async with http.get(server.make_url("/v1/openapi.json")) as response:
                assert response.status == 200
    finally:
        await server.close()
    assert body["error"] == "admin_disabled"
    assert "TRIGGERS_ADMIN_TOKEN" in body["detail"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        ("{not json", 400, "invalid_json", "not valid JSON"),
        ("[]", 422, "invalid_body", "Expected `object`"),
        ({"cluster": "demo", "app": "shop"}, 422, "invalid_body", "action"),
        ({**SCALE, "max_replicas": "5"}, 422, "invalid_body", "max_replicas"),
        ({**SCALE, "max_replicas": -1}, 422, "invalid_body", "max_replicas"),
        ({**SCALE, "colour": "red"}, 422, "invalid_body", "colour"),
        ({**SCALE, "min_replicas": 4, "max_replicas": 2}, 422, "invalid_body", "above"),
        ({**SCALE, "service": None}, 422, "invalid_body", "--service"),
        ({**SCALE, "app": "no spaces"}, 422, "invalid_body", "app"),
        ({**SCALE, "namespace": "Team_A"}, 422, "invalid_body", "namespace"),
        (
            {**SCALE, "expires_in": 10, "expires_at": "2099-01-01T00:00:00Z"},
            422,
            "invalid_body",
            "not both",
        ),
        ({**SCALE, "expires_at": "2001-01-01T00:00:00Z"}, 422, "invalid_body", "past"),
        ({**SCALE, "allowed_methods": ["PUT"]}, 422, "invalid_body", "allowed_methods"),
        ({**SCALE, "image_update": True}, 422, "invalid_body", "redeploy triggers only"),
        (
            {"cluster": "demo", "app": "shop", "action": "redeploy", "max_replicas": 3},
            422,
            "invalid_body",
            "scaling triggers only",
        ),
    ],
)
async def test_bad_create_bodies_say_what_is_wrong(
    gateway: Gateway, body: object, status: int, code: str, fragment: str
) -> None:
    """A malformed body is 400, a body that does not fit is 422, each naming the problem."""
    headers = {"Authorization": f"Bearer {gateway.settings.admin_token}"}
    data = body if isinstance(body, str) else None
    async with gateway.http.post(
        f"{gateway.url}/v1/triggers",
        data=data,
        json=None if data is not None else body,
        headers=headers,
    ) as response:
        answer = await response.json()
        assert response.status == status, answer
    assert answer["error"] == code
    assert fragment in answer["detail"]
    _, listed = await gateway.admin("GET", "/v1/triggers?status=all")
    assert listed["triggers"] == []


@pytest.mark.unit
@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("?limit=0", "limit"),
        ("?limit=abc", "limit"),
        ("?status=gone", "status"),
        ("?colour=red", "unknown parameter"),
        ("?app=a&app=b", "2 times"),
        ("?cluster=no%20spaces", "cluster"),
    ],
)
async def test_bad_list_parameters_are_400(gateway: Gateway, query: str, fragment: str) -> None:
    """A bad query parameter on GET /v1/triggers is a 400 naming it."""
    status, body = await gateway.admin("GET", f"/v1/triggers{query}")
    assert status == 400, body
    assert fragment in body["detail"]


@pytest.mark.unit
async def test_bad_patch_and_rotate_bodies(gateway: Gateway) -> None:
    """PATCH and rotate refuse bodies that do not fit with 400/422 and change nothing."""
    _, created = await gateway.admin("POST", "/v1/triggers", {**SCALE, "max_replicas": 5})
    path = f"/v1/triggers/{created['id']}"
    status, body = await gateway.admin("PATCH", path, {"min_replicas": 6})
    assert (status, body["error"]) == (422, "invalid_body")
    status, body = await gateway.admin("PATCH", path, {"cooldown": 10**9})
    assert (status, body["error"]) == (422, "invalid_body")
    status, body = await gateway.admin("POST", f"{path}/rotate", {"grace": -1})
    assert (status, body["error"]) == (422, "invalid_body")
    status, body = await gateway.admin("PATCH", path, {"cluster": "other"})
    assert (status, body["error"]) == (422, "invalid_body")
    _, shown = await gateway.admin("GET", path)
    assert (shown["min_replicas"], shown["cooldown"], shown["rotated_at"]) == (None, None, None)


async def test_gateway_on_postgresql_end_to_end(
    pg_url: str, settings: Settings, bus: AmqpBus
) -> None:
    """With TRIGGERS_DATABASE=postgresql://..., the gateway migrates at start, creates through
    the admin API, authenticates calls, audits them and keeps their jobs."""
    pg_settings = settings.with_(database=pg_url)
    server = TestServer(create_app(pg_settings, bus=bus), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            gateway = Gateway(str(server.make_url("")).rstrip("/"), http, pg_settings)
            status, created = await gateway.admin(
                "POST", "/v1/triggers", {**SCALE, "max_replicas": 3}
            )
            assert status == 201, created
            async with http.post(
                gateway.call_url_for(created) + "&type=scale_out&step=1"
            ) as response:
                assert response.status == 202
                accepted = await response.json()
            async with http.get(f"{gateway.url}/v1/jobs/{accepted['job_id']}") as response:
                job = await response.json()
                assert response.status == 200, job
            assert job["status"] == "accepted"  # no worker here: written by the gateway
            async with http.post(
                gateway.call_url_for(created) + "&type=scale_out&step=x"
            ) as response:
                assert response.status == 400
            status, audit = await gateway.admin("GET", f"/v1/audit?trigger_id={created['id']}")
    finally:
        await server.close()
    assert [(e["outcome"], e["reason"]) for e in audit["entries"]] == [
        ("rejected", "invalid_step"),
        ("accepted", None),
    ]


@pytest.mark.unit
async def test_patch_changes_alert_options_and_the_next_alert_uses_them(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """PATCH step, alert_cooldown, scale_in_on_resolve: stored, shown as options, applied to
    the next alert; an option that does not fit the trigger is 422."""
    _, created = await gateway.admin("POST", "/v1/triggers", {**SCALE, "step": 2})
    assert created["options"] == {"step": 2}
    path = f"/v1/triggers/{created['id']}"
    status, patched = await gateway.admin(
        "PATCH", path, {"step": 4, "alert_cooldown": 30, "scale_in_on_resolve": True}
    )
    assert status == 200, patched
    assert patched["options"] == {"step": 4, "alert_cooldown": 30, "scale_in_on_resolve": True}
    assert patched["cooldown"] is None  # the policy's own cooldown is another thing
    status, cleared = await gateway.admin("PATCH", path, {"alert_cooldown": None})
    assert (status, cleared["options"]) == (200, {"step": 4, "scale_in_on_resolve": True})
    trigger = await store.get(created["id"])
    assert trigger is not None
    assert (trigger.options.step, trigger.options.cooldown) == (4, None)
    _, redeploy = await gateway.admin(
        "POST", "/v1/triggers", {"cluster": "demo", "app": "shop", "action": "redeploy"}
    )
    status, body = await gateway.admin(
        "PATCH", f"/v1/triggers/{redeploy['id']}", {"scale_in_on_resolve": True}
    )
    assert (status, body["error"]) == (422, "invalid_body")
    assert "scale triggers only" in body["detail"]
    status, body = await gateway.admin("PATCH", path, {"step": 0})
    assert status == 422
