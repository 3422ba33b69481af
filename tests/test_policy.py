"""Per-trigger policy through HTTP: cooldown, replica bounds, expiry, disabled, rate, methods."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.limits import CallLimits, MemoryCallLimits, RedisCallLimits
from gateway.shared_state import open_redis
from shared.messages import ServiceState
from shared.policy import PolicyChanges
from shared.settings import Settings
from shared.store import SqliteTriggerStore
from shared.triggers import Trigger
from tests.support.gateways import ADMIN_TOKEN, Gateway
from tests.support.redis_keys import REDIS
from tests.support.waiting import eventually
from tests.support.workers import Results
from workers.orchestrators.base import scale_change
from workers.orchestrators.local import LocalOrchestrator
from workers.worker import Worker


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This module's gateways serve the admin API."""
    return settings.with_(admin_token=ADMIN_TOKEN)


def _replicas(cluster: LocalOrchestrator, service: str = "web") -> int:
    snapshot = cluster.cluster.snapshot()
    replicas: int = snapshot["clusters"]["demo"]["apps"]["shop"]["services"][service]["replicas"]
    return replicas


async def _scale_trigger(store: SqliteTriggerStore, **policy: object) -> tuple[Trigger, str]:
    return await store.create(
        cluster="demo",
        app="shop",
        action="scale",
        service="web",
        policy=PolicyChanges(**policy),  # type: ignore[arg-type] # test inputs are literals
    )


async def _storm(
    http: aiohttp.ClientSession, urls: list[str]
) -> list[tuple[int, dict[str, object]]]:
    async def call(url: str) -> tuple[int, dict[str, object]]:
        async with http.post(url) as response:
            return response.status, await response.json()

    return await asyncio.gather(*(call(u) for u in urls))


@pytest.mark.unit
async def test_alert_storm_scales_once_within_the_cooldown_and_never_beyond_max(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """50 calls in a second: one command, clamped at max_replicas; 49 answered 'ignored'."""
    trigger, secret = await _scale_trigger(store, max_replicas=4, cooldown=60)
    url = gateway.call_url(trigger, secret) + "&type=scale_out&step=3"
    answers = await _storm(gateway.http, [url] * 50)

    assert Counter(status for status, _ in answers) == {202: 1, 200: 49}
    ignored = [body for status, body in answers if status == 200]
    assert {(b["status"], b["reason"]) for b in ignored} == {("ignored", "cooldown")}
    (accepted,) = [body for status, body in answers if status == 202]
    (event,) = await results.wait_for(str(accepted["job_id"]))
    assert (event.status, event.clamped, event.applied_step) == ("succeeded", True, 2)
    assert event.after["web"].replicas == 4
    assert _replicas(cluster) == 4

    _, audit = await gateway.admin("GET", f"/v1/audit?trigger_id={trigger.id}&limit=100")
    assert Counter(e["outcome"] for e in audit["entries"]) == {"accepted": 1, "ignored": 49}


async def test_storm_across_two_gateways_sharing_redis_scales_once(
    shared_gateways: list[Gateway],
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """Two gateways with limits in Redis agree: 50 calls split between them publish once."""
    trigger, secret = await _scale_trigger(store, max_replicas=10, cooldown=60)
    urls = [
        shared_gateways[i % 2].call_url(trigger, secret) + "&type=scale_out&step=1"
        for i in range(50)
    ]
    answers = await _storm(shared_gateways[0].http, urls)
    assert Counter(status for status, _ in answers) == {202: 1, 200: 49}
    (accepted,) = [body for status, body in answers if status == 202]
    (event,) = await results.wait_for(str(accepted["job_id"]))
    assert event.after["web"].replicas == 3
    assert _replicas(cluster) == 3


@pytest.mark.unit
async def test_without_cooldown_a_storm_stops_at_max_replicas(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """50 accepted scale-outs by 1 from 2 with max 5: three apply, the rest say why not."""
    trigger, secret = await _scale_trigger(store, max_replicas=5)
    url = gateway.call_url(trigger, secret) + "&type=scale_out&step=1"
    answers = await _storm(gateway.http, [url] * 50)
    assert {status for status, _ in answers} == {202}
    events = [(await results.wait_for(str(body["job_id"]), within=30))[0] for _, body in answers]
    assert Counter(e.status for e in events) == {"succeeded": 3, "skipped": 47}
    assert max(e.after["web"].replicas for e in events) == 5
    skipped = next(e for e in events if e.status == "skipped")
    assert skipped.detail is not None
    assert "max_replicas 5" in skipped.detail
    assert _replicas(cluster) == 5


@pytest.mark.unit
async def test_scale_in_stops_at_min_replicas(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """scale_in by 5 from 2 with min 1 is clamped to 1; a second call is skipped, saying why."""
    trigger, secret = await _scale_trigger(store, min_replicas=1)
    url = gateway.call_url(trigger, secret) + "&type=scale_in&step=5"
    async with gateway.http.post(url) as response:
        first = await response.json()
    (event,) = await results.wait_for(first["job_id"])
    assert (event.status, event.clamped, event.applied_step) == ("succeeded", True, 1)
    assert event.detail is not None
    assert "min_replicas 1" in event.detail
    async with gateway.http.post(url) as response:
        second = await response.json()
    (again,) = await results.wait_for(second["job_id"])
    assert again.status == "skipped"
    assert again.detail is not None
    assert "min_replicas 1" in again.detail
    assert _replicas(cluster) == 1


@pytest.mark.unit
async def test_expired_trigger_is_refused_with_its_reason(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """A trigger works until its expiry, then answers 403 trigger_expired; nothing is published."""
    trigger, secret = await store.create(
        cluster="demo", app="shop", action="redeploy", policy=PolicyChanges(expires_in=1)
    )
    async with gateway.http.post(gateway.call_url(trigger, secret)) as response:
        assert response.status == 202
    assert trigger.expires_at is not None

    async def refused() -> dict[str, Any] | None:
        async with gateway.http.post(gateway.call_url(trigger, secret)) as response:
            return await response.json() if response.status == 403 else None

    body = await eventually(refused, what="the expiry", within=10)
    assert body["error"] == "trigger_expired"
    assert "--expires-in" in body["detail"]


@pytest.mark.unit
async def test_disabled_trigger_is_refused_until_enabled(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """PATCH enabled=false makes calls answer 403 trigger_disabled at once; enabling restores."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    url = gateway.call_url(trigger, secret)
    async with gateway.http.get(url) as response:
        assert response.status == 202  # and now cached on this gateway
    status, _ = await gateway.admin("PATCH", f"/v1/triggers/{trigger.id}", {"enabled": False})
    assert status == 200
    async with gateway.http.get(url) as response:
        body = await response.json()
        assert response.status == 403
    assert body["error"] == "trigger_disabled"
    assert "--enable" in body["detail"]
    await gateway.admin("PATCH", f"/v1/triggers/{trigger.id}", {"enabled": True})
    async with gateway.http.get(url) as response:
        assert response.status == 202


@pytest.mark.unit
async def test_rate_limit_answers_429_with_retry_after(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """Over its calls per minute a trigger answers 429 with Retry-After; nothing is published."""
    trigger, secret = await store.create(
        cluster="demo", app="shop", action="redeploy", policy=PolicyChanges(rate_limit=3)
    )
    url = gateway.call_url(trigger, secret)
    statuses = []
    for _ in range(3):
        async with gateway.http.post(url) as response:
            statuses.append(response.status)
    async with gateway.http.post(url) as response:
        body = await response.json()
        assert response.status == 429
        retry_after = int(response.headers["Retry-After"])
    assert statuses == [202, 202, 202]
    assert body["error"] == "rate_limited"
    assert 1 <= retry_after <= 20
    assert "3 calls per minute" in body["detail"]


@pytest.mark.unit
async def test_allowed_methods_are_enforced(gateway: Gateway, store: SqliteTriggerStore) -> None:
    """A POST-only trigger answers GET with 405 and Allow: POST."""
    trigger, secret = await store.create(
        cluster="demo",
        app="shop",
        action="redeploy",
        policy=PolicyChanges(allowed_methods=["POST"]),
    )
    url = gateway.call_url(trigger, secret)
    async with gateway.http.get(url) as response:
        body = await response.json()
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
    assert "POST only" in body["detail"]
    async with gateway.http.post(url) as response:
        assert response.status == 202


@pytest.mark.unit
@pytest.mark.parametrize(
    ("current", "delta", "low", "high", "expected", "clamped"),
    [
        (2, 3, None, None, 5, False),
        (2, 3, None, 4, 4, True),
        (4, 1, None, 4, 4, True),
        (6, 1, None, 4, 6, True),  # above max already: left alone, never scaled down
        (2, -5, None, None, 0, True),
        (2, -5, 1, None, 1, True),
        (0, -1, 1, None, 0, True),  # below min already: left alone, never scaled up
        (5, -2, 1, 10, 3, False),
    ],
)
def test_plan_scale_clamps_to_the_bounds(
    current: int, delta: int, low: int | None, high: int | None, expected: int, clamped: bool
) -> None:
    """Every adapter's bound rule: clamp, and never move against the requested direction."""
    before = ServiceState(replicas=current, image="nginx:1.27", revision=3)
    change = scale_change("web", before, delta, min_replicas=low, max_replicas=high)
    assert (change.after["web"].replicas, change.clamped) == (expected, clamped)
    assert (change.detail is None) == (not clamped)
    assert change.status == ("skipped" if expected == current else "succeeded")


@pytest.fixture(params=["memory", "redis"])
async def limits(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[CallLimits]:
    """Each limits backend."""
    if request.param == "memory":
        yield MemoryCallLimits()
        return
    client = open_redis(REDIS)
    yield RedisCallLimits(client, prefix=redis_prefix)
    await client.aclose()


async def test_limits_backends_agree(limits: CallLimits) -> None:
    """Cooldown: one claim wins until released; rate: the burst passes, then a wait is given."""
    assert await limits.claim_cooldown("t1", 60) is None
    remaining = await limits.claim_cooldown("t1", 60)
    assert remaining is not None
    assert 58 < remaining <= 60
    await limits.release_cooldown("t1")
    assert await limits.claim_cooldown("t1", 60) is None
    assert [await limits.take_rate("t2", 2) for _ in range(2)] == [None, None]
    wait = await limits.take_rate("t2", 2)
    assert wait is not None
    assert 29 < wait <= 30
