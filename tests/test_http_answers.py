"""Every answer of the gateway: no versions in `Server`, JSON bodies end with a newline."""

from __future__ import annotations

import re

import pytest

from shared.policy import PolicyChanges
from shared.store import TriggerStore
from tests.support.gateways import Gateway

pytestmark = pytest.mark.unit


async def test_answers_name_no_versions_and_json_ends_with_a_newline(
    gateway: Gateway, store: TriggerStore
) -> None:
    """Successes, errors of our own and of aiohttp's router, and the ignored answer: each says
    `Server: container-triggers` and, when JSON, ends with one newline."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    await store.update(trigger.id, PolicyChanges(cooldown=60))  # the second call is ignored
    call = gateway.call_url(trigger, secret)
    requests = [
        ("GET", call, 202),
        ("GET", call, 200),
        ("GET", f"{gateway.url}/hook/trigger", 400),
        ("GET", call.replace(secret, "0" * len(secret)), 403),
        ("PUT", call, 405),
        ("GET", f"{gateway.url}/no/such/path", 404),
        ("GET", f"{gateway.url}/v1/triggers", 403),  # the admin API is off without a token
        ("GET", f"{gateway.url}/v1/openapi.json", 200),
        ("GET", f"{gateway.url}/healthz", 200),
        ("GET", f"{gateway.url}/readyz", 200),
        ("GET", f"{gateway.url}/v1/jobs/{'0' * 32}", 404),
    ]
    for method, url, expected in requests:
        async with gateway.http.request(method, url) as response:
            body = await response.read()
            assert response.status == expected, (method, url, body)
            assert response.headers["Server"] == "container-triggers"
            assert response.content_type == "application/json"
            assert body.endswith(b"}\n"), body[-20:]
    # Nothing anywhere says which Python or aiohttp answers.
    async with gateway.http.get(f"{gateway.url}/metrics") as response:
        assert not re.search(r"aiohttp|Python/", response.headers.get("Server", ""))
