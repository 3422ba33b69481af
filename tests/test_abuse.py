"""Brute force: wrong secrets are limited per address and trigger; a right one always works."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.broker import AmqpBus
from shared.settings import Settings
from shared.store import SqliteTriggerStore, TriggerStore
from shared.triggers import Trigger, new_secret, new_trigger_id
from tests.support.gateways import Gateway, running_gateways

pytestmark = pytest.mark.unit


async def test_wrong_secrets_past_the_limit_get_429_and_the_right_secret_still_works(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """After the limit of 403s for one trigger, wrong secrets get 429; its callers are served."""
    limit = gateway.settings.auth_failures_per_minute
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    wrong = gateway.call_url(trigger, new_secret())
    statuses = []
    for _ in range(limit + 3):
        async with gateway.http.get(wrong) as response:
            statuses.append(response.status)
            body = await response.json()
    assert statuses == [403] * limit + [429] * 3
    assert body["error"] == "too_many_failed_attempts"
    async with gateway.http.get(wrong) as response:
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    async with gateway.http.get(gateway.call_url(trigger, secret)) as response:
        assert response.status == 202


async def test_made_up_trigger_ids_do_not_lock_out_other_triggers_at_the_same_address(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """Many calls with made-up ids from one address leave another trigger's callers served."""
    limit = gateway.settings.auth_failures_per_minute
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    made_up = Trigger(**{**_fields(trigger), "id": new_trigger_id()})
    statuses = []
    for _ in range(limit + 5):
        async with gateway.http.get(gateway.call_url(made_up, new_secret())) as response:
            statuses.append(response.status)
    assert statuses[-1] == 429
    async with gateway.http.get(gateway.call_url(trigger, secret)) as response:
        assert response.status == 202


async def test_concurrent_wrong_guesses_cannot_race_past_the_limit(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """300 wrong guesses at once: exactly the limit of them are answered 403, the rest 429."""
    limit = gateway.settings.auth_failures_per_minute
    trigger, _ = await store.create(cluster="demo", app="shop", action="redeploy")

    async def guess() -> int:
        async with gateway.http.get(gateway.call_url(trigger, new_secret())) as response:
            return response.status

    statuses = await asyncio.gather(*(guess() for _ in range(300)))
    assert statuses.count(403) == limit
    assert statuses.count(429) == 300 - limit


class CountingStore:
    """A trigger store that counts `get` calls."""

    def __init__(self, inner: TriggerStore) -> None:
        self.inner = inner
        self.reads: dict[str, int] = {}

    async def get(self, trigger_id: str) -> Trigger | None:
        """Count, then read."""
        self.reads[trigger_id] = self.reads.get(trigger_id, 0) + 1
        return await self.inner.get(trigger_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _fields(trigger: Trigger) -> dict[str, Any]:
    return {name: getattr(trigger, name) for name in trigger.__struct_fields__}


async def test_wrong_guesses_cost_a_bounded_number_of_store_reads_alike_for_unknown_and_live_ids(
    settings: Settings, store: SqliteTriggerStore, bus: AmqpBus
) -> None:
    """Twenty quick wrong guesses read the store a few times, not twenty, for live and unknown ids."""
    counting = CountingStore(store)
    live, _ = await store.create(cluster="demo", app="shop", action="redeploy")
    unknown = Trigger(**{**_fields(live), "id": new_trigger_id()})
    async with running_gateways(settings, counting, bus, 1) as (gateway,):
        for target in (live, unknown):
            for _ in range(20):
                async with gateway.http.get(gateway.call_url(target, new_secret())) as response:
                    assert response.status == 403
    # One read, then one more each time the cached copy is older than a quarter second.
    assert 1 <= counting.reads[live.id] < 10
    assert 1 <= counting.reads[unknown.id] < 10
