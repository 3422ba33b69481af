"""Brute force: too many wrong secrets from one address earn a 429 before any lookup."""

from __future__ import annotations

from shared.store import SqliteTriggerStore
from shared.triggers import new_secret
from tests.conftest import Gateway


async def test_failed_authentications_are_rate_limited_per_address(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """After the limit of 403s in a minute, even the right secret gets 429 with Retry-After."""
    limit = gateway.settings.auth_failures_per_minute
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    wrong = gateway.call_url(trigger, new_secret())
    statuses = []
    for _ in range(limit + 3):
        async with gateway.http.get(wrong) as response:
            statuses.append(response.status)
    assert statuses == [403] * limit + [429] * 3
    async with gateway.http.get(gateway.call_url(trigger, secret)) as response:
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        body = await response.json()
    assert body["error"] == "too_many_failed_attempts"
