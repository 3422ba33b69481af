"""A call answered 503 is never lost and never doubled: claims released or kept as unconfirmed,
and the Idempotency-Key header (issue 13, items 3 and 4)."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.broker import AmqpBus
from shared.errors import BrokerUnavailable
from shared.messages import CommandEnvelope
from shared.policy import PolicyChanges
from shared.settings import Settings
from shared.store import SqliteTriggerStore, TriggerStore
from shared.triggers import TriggerOptions
from tests.support.broker import published
from tests.support.databases import on_both_databases
from tests.support.gateways import Gateway, running_gateways
from tests.support.workers import Results
from tests.test_event_calls import JSON, image_trigger, post
from tests.test_sources import raw
from workers.orchestrators.local import LocalOrchestrator
from workers.worker import Worker


class FlakyBus:
    """The real bus, which can look disconnected or lose the confirm of a command it sent."""

    def __init__(self, inner: AmqpBus) -> None:
        self.inner = inner
        self.up = True
        self.lose_confirm = False

    @property
    def ready(self) -> bool:
        """Disconnected while `up` is False."""
        return self.up and self.inner.ready

    async def publish_command(self, envelope: CommandEnvelope) -> None:
        """Publish; with `lose_confirm`, raise after the broker has the command."""
        if not self.up:
            msg = "not connected to RabbitMQ"
            raise BrokerUnavailable(msg)
        await self.inner.publish_command(envelope)
        if self.lose_confirm:
            msg = "RabbitMQ did not confirm within 5s"
            raise BrokerUnavailable(msg)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
async def flaky(
    settings: Settings, store: SqliteTriggerStore, bus: AmqpBus
) -> AsyncIterator[tuple[Gateway, FlakyBus]]:
    """A gateway publishing through a `FlakyBus`."""
    wrapped = FlakyBus(bus)
    async with running_gateways(settings, store, wrapped, 1) as (gateway,):
        yield gateway, wrapped


async def _cooldown_alert_trigger(store: SqliteTriggerStore) -> Any:
    return await store.create(
        cluster="demo",
        app="shop",
        action="scale",
        service="web",
        options=TriggerOptions(step=1),
        policy=PolicyChanges(cooldown=300),
    )


async def test_a_503_before_publishing_releases_the_cooldown_and_the_alert(
    flaky: tuple[Gateway, FlakyBus], store: SqliteTriggerStore
) -> None:
    """503 wait_unavailable leaves nothing claimed: Alertmanager's retry acts (202, not ignored)."""
    gateway, bus = flaky
    trigger, secret = await _cooldown_alert_trigger(store)
    body = raw("alertmanager_firing.json")
    bus.up = False
    status, answer = await post(gateway, trigger, secret, body, JSON, "&wait=0.5")
    assert (status, answer["error"]) == (503, "wait_unavailable"), answer
    status, answer = await post(gateway, trigger, secret, body, JSON)
    assert (status, answer["error"]) == (503, "broker_unavailable"), answer
    bus.up = True
    status, answer = await post(gateway, trigger, secret, body, JSON)
    assert status == 202, answer
    assert len(await published(gateway)) == 1


async def test_a_signed_call_answered_503_can_be_retried(
    flaky: tuple[Gateway, FlakyBus], store: SqliteTriggerStore
) -> None:
    """A timestamped-signature call answered 503: the sender's identical retry is 202, not 409."""
    gateway, bus = flaky
    key = "k3y-signing-0123456"
    trigger, secret = await image_trigger(
        store, "svendowideit/testhook", signature="timestamped", signing_secret=key
    )
    body = raw("dockerhub_push.json")
    stamp = int(time.time())
    digest = hmac.new(key.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    headers = {**JSON, "X-Signature": f"t={stamp},v1={digest}"}
    bus.up = False
    status, _ = await post(gateway, trigger, secret, body, headers)
    assert status == 503
    bus.up = True
    status, answer = await post(gateway, trigger, secret, body, headers)
    assert status == 202, answer
    status, answer = await post(gateway, trigger, secret, body, headers)
    assert (status, answer["error"]) == (409, "replayed_request")


async def test_a_lost_confirm_is_retried_as_the_same_job_and_changes_the_cluster_once(
    flaky: tuple[Gateway, FlakyBus],
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """The broker kept a command whose confirm was lost: the alert's retry republishes that job."""
    gateway, bus = flaky
    trigger, secret = await _cooldown_alert_trigger(store)
    body = raw("alertmanager_firing.json")
    bus.lose_confirm = True
    status, answer = await post(gateway, trigger, secret, body, JSON)
    assert status == 503, answer
    bus.lose_confirm = False
    status, answer = await post(gateway, trigger, secret, body, JSON)
    assert status == 202, answer
    first, second = await results.wait_for(answer["job_id"], count=2)
    assert sorted([first.duplicate, second.duplicate]) == [False, True]
    replicas = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]["web"]
    assert replicas["replicas"] == 3  # 2, scaled out by one step once
    status, answer = await post(gateway, trigger, secret, body, JSON)
    assert (status, answer["status"]) == (200, "ignored")


async def _keyed(gateway: Gateway, url: str, key: str) -> tuple[int, dict[str, Any]]:
    async with gateway.http.post(url, headers={"Idempotency-Key": key}) as response:
        return response.status, await response.json()


async def test_the_same_idempotency_key_answers_the_same_job(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """Three calls with one key publish one command and answer its job; a new key is a new job."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    url = gateway.call_url(trigger, secret)
    key = str(uuid.uuid4())
    answers = [await _keyed(gateway, url, key) for _ in range(3)]
    assert [status for status, _ in answers] == [202, 202, 202]
    assert len({answer["job_id"] for _, answer in answers}) == 1
    assert answers[1][1]["idempotent_replay"] is True
    status, other = await _keyed(gateway, url, str(uuid.uuid4()))
    assert status == 202
    assert other["job_id"] != answers[0][1]["job_id"]
    assert len(await published(gateway)) == 2


async def test_an_idempotency_key_is_shared_by_gateways_through_redis(
    shared_gateways: list[Gateway], store: SqliteTriggerStore
) -> None:
    """The same key sent to two gateways sharing Redis runs once and answers one job id."""
    one, other = shared_gateways
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    key = str(uuid.uuid4())
    status, first = await _keyed(one, one.call_url(trigger, secret), key)
    status2, second = await _keyed(other, other.call_url(trigger, secret), key)
    assert (status, status2) == (202, 202)
    assert first["job_id"] == second["job_id"]
    assert len(await published(one)) == 1


async def test_a_keyed_call_whose_confirm_was_lost_is_retried_as_the_same_job(
    flaky: tuple[Gateway, FlakyBus], store: SqliteTriggerStore
) -> None:
    """With an Idempotency-Key, retrying after a lost confirm publishes the same job id again."""
    gateway, bus = flaky
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    url = gateway.call_url(trigger, secret)
    key = str(uuid.uuid4())
    bus.lose_confirm = True
    status, _ = await _keyed(gateway, url, key)
    assert status == 503
    bus.lose_confirm = False
    status, answer = await _keyed(gateway, url, key)
    assert status == 202
    commands = await published(gateway)
    assert [c.job_id for c in commands] == [answer["job_id"]] * 2


async def test_a_malformed_idempotency_key_is_400(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """An Idempotency-Key over 255 characters is refused and nothing is published."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    status, answer = await _keyed(gateway, gateway.call_url(trigger, secret), "k" * 300)
    assert (status, answer["error"]) == (400, "invalid_idempotency_key")
    assert await published(gateway) == []


@on_both_databases
async def test_x_request_id_is_the_idempotency_key_when_the_trigger_says_so(
    gateway: Gateway, store: TriggerStore
) -> None:
    """With --request-id-idempotency, a repeated X-Request-ID answers the same job; without, two."""
    keyed, secret = await store.create(
        cluster="demo",
        app="shop",
        action="redeploy",
        policy=PolicyChanges(request_id_idempotency=True),
    )
    plain, plain_secret = await store.create(cluster="demo", app="shop", action="redeploy")
    request_id = str(uuid.uuid4())

    async def call(url: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        async with gateway.http.post(url, headers=headers) as response:
            return response.status, await response.json()

    url = gateway.call_url(keyed, secret)
    first = await call(url, {"X-Request-ID": request_id})
    again = await call(url, {"X-Request-ID": request_id})
    assert (first[0], again[0]) == (202, 202), (first, again)
    assert again[1]["job_id"] == first[1]["job_id"]
    assert again[1]["idempotent_replay"] is True
    # An Idempotency-Key, when sent, is the key: the same request id with another key is new.
    other = await call(url, {"X-Request-ID": request_id, "Idempotency-Key": str(uuid.uuid4())})
    assert other[0] == 202
    assert other[1]["job_id"] != first[1]["job_id"]
    status, refused = await call(url, {"X-Request-ID": "k" * 300})
    assert (status, refused["error"]) == (400, "invalid_idempotency_key")
    assert "X-Request-ID" in refused["detail"]

    plain_url = gateway.call_url(plain, plain_secret)
    one = await call(plain_url, {"X-Request-ID": request_id})
    two = await call(plain_url, {"X-Request-ID": request_id})
    assert one[1]["job_id"] != two[1]["job_id"]
    assert len(await published(gateway)) == 4
