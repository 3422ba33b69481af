"""Bad input: a 4xx with a JSON error that says what is wrong, and nothing published."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from shared.store import SqliteTriggerStore
from shared.triggers import Trigger, encode_trigger_url, new_secret
from tests.support.broker import commands_published
from tests.support.gateways import Gateway

pytestmark = pytest.mark.unit


async def _published(gateway: Gateway) -> int:
    return await commands_published(gateway.bus, gateway.settings.amqp_url)


def _token(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode()


def _with_step(step: str) -> Callable[[Trigger, Trigger, str, str], str]:
    return lambda s, r, ss, rs: f"triggerUrl={_t(s)}&secret={ss}&type=scale_out&step={step}"


Case = tuple[str, Callable[[Trigger, Trigger, str, str], str], int, str]

# Each case builds a query from (scale trigger, redeploy trigger, scale secret, redeploy secret).
CASES: list[Case] = [
    (
        "no secret",
        lambda s, r, ss, rs: f"triggerUrl={_t(s)}&type=scale_out&step=1",
        400,
        "missing_secret",
    ),
    (
        "empty secret",
        lambda s, r, ss, rs: f"triggerUrl={_t(s)}&secret=&type=scale_out&step=1",
        400,
        "missing_secret",
    ),
    (
        "wrong secret",
        lambda s, r, ss, rs: f"triggerUrl={_t(s)}&secret={new_secret()}&type=scale_out&step=1",
        403,
        "forbidden",
    ),
    (
        "non-hex secret",
        lambda s, r, ss, rs: f"triggerUrl={_t(s)}&secret=xyz&type=scale_out&step=1",
        403,
        "forbidden",
    ),
    (
        "other trigger's secret",
        lambda s, r, ss, rs: f"triggerUrl={_t(s)}&secret={rs}&type=scale_out&step=1",
        403,
        "forbidden",
    ),
    (
        "unknown trigger",
        lambda s, r, ss, rs: (
            f"triggerUrl={_token('demo|shop|scaling|zzzzzzzzzzzzzzzzzzzzzzzzzz|')}&secret={ss}&type=scale_out&step=1"
        ),
        403,
        "forbidden",
    ),
    (
        "no triggerUrl",
        lambda s, r, ss, rs: f"secret={ss}&type=scale_out&step=1",
        400,
        "missing_trigger_url",
    ),
    (
        "triggerUrl not base64",
        lambda s, r, ss, rs: f"triggerUrl=%%%%&secret={ss}",
        400,
        "invalid_trigger_url",
    ),
    (
        "triggerUrl with 3 fields",
        lambda s, r, ss, rs: f"triggerUrl={_token(f'demo|shop|{s.id}|')}&secret={ss}",
        400,
        "invalid_trigger_url",
    ),
    (
        "triggerUrl with 5 fields",
        lambda s, r, ss, rs: f"triggerUrl={_token(f'demo|shop|scaling|{s.id}|x|')}&secret={ss}",
        400,
        "invalid_trigger_url",
    ),
    (
        "triggerUrl, wrong cluster",
        lambda s, r, ss, rs: (
            f"triggerUrl={_token(f'prod|shop|scaling|{s.id}|')}&secret={ss}&type=scale_out&step=1"
        ),
        403,
        "forbidden",
    ),
    (
        "triggerUrl, wrong app",
        lambda s, r, ss, rs: (
            f"triggerUrl={_token(f'demo|blog|scaling|{s.id}|')}&secret={ss}&type=scale_out&step=1"
        ),
        403,
        "forbidden",
    ),
    (
        "triggerUrl, wrong action",
        lambda s, r, ss, rs: f"triggerUrl={_token(f'demo|shop|redeploy|{s.id}|')}&secret={ss}",
        403,
        "forbidden",
    ),
    (
        "type missing",
        lambda s, r, ss, rs: f"triggerUrl={_t(s)}&secret={ss}&step=1",
        400,
        "missing_type",
    ),
    (
        "type invalid",
        lambda s, r, ss, rs: f"triggerUrl={_t(s)}&secret={ss}&type=scale_up&step=1",
        400,
        "invalid_type",
    ),
    (
        "step missing",
        lambda s, r, ss, rs: f"triggerUrl={_t(s)}&secret={ss}&type=scale_out",
        400,
        "missing_step",
    ),
    *[
        (
            f"step {bad!r}",
            _with_step(bad),
            400,
            "invalid_step",
        )
        for bad in ["0", "101", "-1", "1.5", "abc", "1e9", "", "+5", "%205", "0x10", "007a"]
    ],
    (
        "step twice",
        lambda s, r, ss, rs: f"triggerUrl={_t(s)}&secret={ss}&type=scale_out&step=1&step=2",
        400,
        "duplicate_parameter",
    ),
    (
        "secret twice",
        lambda s, r, ss, rs: f"triggerUrl={_t(s)}&secret={ss}&secret={ss}&type=scale_out&step=1",
        400,
        "duplicate_parameter",
    ),
    (
        "unknown parameter",
        lambda s, r, ss, rs: f"triggerUrl={_t(s)}&secret={ss}&type=scale_out&setp=1",
        400,
        "unknown_parameter",
    ),
    (
        "scale parameters on a redeploy trigger",
        lambda s, r, ss, rs: f"triggerUrl={_t(r)}&secret={rs}&type=scale_out&step=1",
        400,
        "unexpected_parameter",
    ),
    ("revoked trigger", lambda s, r, ss, rs: "REVOKED", 403, "forbidden"),
]


def _t(trigger: Trigger) -> str:
    return encode_trigger_url(trigger.cluster, trigger.app, trigger.action, trigger.id)


@pytest.fixture
async def triggers(store: SqliteTriggerStore) -> dict[str, Any]:
    """A scale and a redeploy trigger on demo/shop, and a revoked one."""
    scale, scale_secret = await store.create(
        cluster="demo", app="shop", action="scale", service="web"
    )
    redeploy, redeploy_secret = await store.create(cluster="demo", app="shop", action="redeploy")
    revoked, revoked_secret = await store.create(cluster="demo", app="shop", action="redeploy")
    await store.revoke(revoked.id)
    return {
        "args": (scale, redeploy, scale_secret, redeploy_secret),
        "revoked": f"triggerUrl={_t(revoked)}&secret={revoked_secret}",
    }


@pytest.mark.parametrize(("name", "build", "status", "code"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_bad_call_is_refused_and_publishes_nothing(
    gateway: Gateway,
    triggers: dict[str, Any],
    method: str,
    name: str,
    build: Callable[..., str],
    status: int,
    code: str,
) -> None:
    """Each malformed or unauthorised call gets its status and error code, and no command."""
    query = triggers["revoked"] if name == "revoked trigger" else build(*triggers["args"])
    secret = triggers["args"][2]
    async with gateway.http.request(method, f"{gateway.url}/hook/trigger?{query}") as response:
        text = await response.text()
        assert response.status == status, text
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str)
    assert len(body["detail"]) > 10
    assert set(body) == {"error", "detail"}
    assert secret not in text
    assert await _published(gateway) == 0


async def test_control_a_good_call_is_published(gateway: Gateway, triggers: dict[str, Any]) -> None:
    """The counterpart of the table: the same setup with a valid call publishes one command."""
    scale, _, scale_secret, _ = triggers["args"]
    query = f"triggerUrl={_t(scale)}&secret={scale_secret}&type=scale_out&step=100"
    async with gateway.http.get(f"{gateway.url}/hook/trigger?{query}") as response:
        assert response.status == 202
    assert await _published(gateway) == 1


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_other_methods_get_405_json(
    gateway: Gateway, triggers: dict[str, Any], method: str
) -> None:
    """Methods other than GET and POST are refused with 405 and an Allow header."""
    scale, _, scale_secret, _ = triggers["args"]
    query = f"triggerUrl={_t(scale)}&secret={scale_secret}&type=scale_out&step=1"
    async with gateway.http.request(method, f"{gateway.url}/hook/trigger?{query}") as response:
        assert response.status == 405
        body = await response.json()
        assert "GET" in response.headers["Allow"]
    assert body["error"] == "method_not_allowed"
    assert await _published(gateway) == 0


async def test_oversized_body_gets_413(gateway: Gateway, triggers: dict[str, Any]) -> None:
    """A body over the limit is refused before anything is published, declared or chunked."""
    scale, _, scale_secret, _ = triggers["args"]
    url = f"{gateway.url}/hook/trigger?triggerUrl={_t(scale)}&secret={scale_secret}&type=scale_out&step=1"
    big = b"x" * (gateway.settings.max_body_bytes + 1)
    async with gateway.http.post(url, data=big) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"y" * 1024

    async with gateway.http.post(url, data=chunks()) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "payload_too_large"
    assert await _published(gateway) == 0


async def test_unknown_path_is_json_404(gateway: Gateway) -> None:
    """Even a wrong path gets a JSON error that points to the right one."""
    async with gateway.http.get(f"{gateway.url}/hook/trigge") as response:
        assert response.status == 404
        body = await response.json()
    assert "/hook/trigger" in body["detail"]
