"""Recently acted-on events shared by several gateways through Redis, and kept when it is down.

The backends against the real Redis (a key prefix per test), then through HTTP: two
gateways sharing one Redis act once on a storm, a replay or a push sent to both.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.recent import PENDING, MemoryRecentEvents, RecentEvents, RedisRecentEvents
from gateway.shared_state import RedisOutage, open_redis
from shared.broker import AmqpBus
from shared.policy import PolicyChanges
from shared.settings import Settings
from shared.store import SqliteTriggerStore
from shared.triggers import Trigger, TriggerOptions
from tests.support.broker import published
from tests.support.gateways import Gateway, running_gateways
from tests.support.processes import free_port
from tests.support.redis_keys import REDIS
from tests.support.waiting import eventually
from tests.test_event_calls import GITHUB_KEY, JSON, image_trigger, post
from tests.test_sources import mutated, raw


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    """A Redis client of the test's own, as one gateway process has."""
    opened = open_redis(REDIS)
    yield opened
    await opened.aclose()


@pytest.fixture(params=["memory", "redis"])
def recent(request: pytest.FixtureRequest, client: Any, redis_prefix: str) -> RecentEvents:
    """Each backend."""
    if request.param == "redis":
        return RedisRecentEvents(client, prefix=redis_prefix)
    return MemoryRecentEvents()


async def test_recent_backends_agree(recent: RecentEvents) -> None:
    """Claim once, pending until confirmed, then the job id; release spares a confirmed key."""
    assert await recent.claim("alert:t:firing:g", 60) is None
    assert await recent.claim("alert:t:firing:g", 60) == PENDING
    assert await recent.seen("alert:t:firing:g") == PENDING
    await recent.confirm("alert:t:firing:g", "job-1", 60)
    assert await recent.claim("alert:t:firing:g", 60) == "job-1"
    await recent.release("alert:t:firing:g")
    assert await recent.seen("alert:t:firing:g") == "job-1"
    await recent.forget("alert:t:firing:g")
    assert await recent.seen("alert:t:firing:g") is None

    assert await recent.claim("push:t:x", 60) is None
    await recent.release("push:t:x")
    assert await recent.claim("push:t:x", 60) is None  # released: the retry acts
    assert await recent.claim("push:t:zero", 0) is None
    assert await recent.seen("push:t:zero") is None  # a zero time to live records nothing


async def test_claims_expire_after_their_ttl(recent: RecentEvents) -> None:
    """A claimed key is free again once its time to live has passed."""
    assert await recent.claim("push:t:short", 0.05) is None

    async def free() -> bool | None:
        return True if await recent.claim("push:t:short", 60) is None else None

    await eventually(free, what="the claim's expiry", within=5)


async def test_release_by_one_gateway_never_deletes_a_key_another_confirmed(
    redis_prefix: str,
) -> None:
    """A's release after its claim expired spares B's confirmed key; B's pending claim too."""
    clients = [open_redis(REDIS), open_redis(REDIS)]
    a, b = (RedisRecentEvents(c, prefix=redis_prefix) for c in clients)
    try:
        assert await a.claim("push:t:d", 0.05) is None

        async def b_claims() -> bool | None:  # once A's publish outlived its claim
            return True if await b.claim("push:t:d", 60) is None else None

        await eventually(b_claims, what="A's claim expiring", within=5)
        await b.confirm("push:t:d", "job-b", 60)
        await a.release("push:t:d")  # A's publish failed after all
        assert await b.seen("push:t:d") == "job-b"
        assert await a.claim("push:t:d", 60) == "job-b"

        assert await b.claim("alert:t:firing:g", 60) is None
        await a.release("alert:t:firing:g")
        assert await a.claim("alert:t:firing:g", 60) == PENDING  # still B's
        await b.release("alert:t:firing:g")
        assert await a.claim("alert:t:firing:g", 60) is None  # B gave it up

        await b.forget("push:t:d")  # a resolve on B supersedes what A confirmed
        assert await a.seen("push:t:d") is None
    finally:
        for c in clients:
            await c.aclose()


async def test_confirm_restarts_the_ttl_and_keys_stay_short(client: Any, redis_prefix: str) -> None:
    """Keys are prefixed and kind-named, a long one hashed; a confirm sets the job's TTL."""
    recent = RedisRecentEvents(client, prefix=redis_prefix)
    long_key = "alert:t:firing:" + '{}:{alertname=~"x"}' * 40
    assert await recent.claim(long_key, 5) is None
    assert await recent.claim("push:t:repo@sha256:abc", 5) is None
    await recent.confirm(long_key, "job-1", 600)
    names = sorted([k.decode() async for k in client.scan_iter(match=f"{redis_prefix}*")])
    hashed = f"{redis_prefix}recent:alert:sha256:{hashlib.sha256(long_key.encode()).hexdigest()}"
    assert names == [hashed, f"{redis_prefix}recent:push:t:repo@sha256:abc"]
    assert 590_000 < await client.pttl(hashed) <= 600_000
    assert await recent.seen(long_key) == "job-1"


async def test_redis_down_falls_back_to_this_process_and_logs_once(redis_prefix: str) -> None:
    """With Redis unreachable each call uses this process's memory; one warning, no failure."""
    down = open_redis(f"redis://127.0.0.1:{free_port()}/0")
    recent = RedisRecentEvents(down, prefix=redis_prefix)
    try:
        with capture_logs() as logs:
            assert await recent.claim("push:t:d", 60) is None
            assert await recent.claim("push:t:d", 60) == PENDING
            await recent.confirm("push:t:d", "job-1", 60)
            assert await recent.seen("push:t:d") == "job-1"
            await recent.release("push:t:d")
            await recent.forget("push:t:other")
    finally:
        await down.aclose()
    (line,) = [e for e in logs if e["event"] == "gateway.recent_unavailable"]
    assert (line["log_level"], line["operation"], line["failures"]) == ("warning", "claim", 1)


@pytest.mark.unit
def test_redis_outage_is_logged_once_per_interval_with_a_count() -> None:
    """The first failure logs at once; the next line, an interval later, counts the rest."""
    now = [100.0]
    outage = RedisOutage("gateway.test_unavailable", interval=30, clock=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(5):
            outage.failed("claim", ConnectionError("refused"))
            now[0] += 10
    assert [(e["operation"], e["failures"]) for e in logs] == [("claim", 1), ("claim", 3)]
    assert logs[0]["error"] == "ConnectionError('refused')"


async def _spread(
    gateways: list[Gateway], trigger: Trigger, secret: str, body: bytes, count: int
) -> list[tuple[int, dict[str, Any]]]:
    """POST `body` to the trigger `count` times at once, alternating between the gateways."""

    async def send(gateway: Gateway) -> tuple[int, dict[str, Any]]:
        url = gateway.call_url(trigger, secret)
        async with gateway.http.post(url, data=body, headers=JSON) as response:
            return response.status, await response.json()

    return await asyncio.gather(*(send(gateways[i % len(gateways)]) for i in range(count)))


def _acted_once(answers: list[tuple[int, dict[str, Any]]]) -> str:
    """One 202 and the rest 200 "ignored", naming its job when they name one; its job id."""
    assert Counter(status for status, _ in answers) == {202: 1, 200: len(answers) - 1}, answers
    (job_id,) = [a["job_id"] for s, a in answers if s == 202]
    ignored = [a for s, a in answers if s == 200]
    assert {a["status"] for a in ignored} == {"ignored"}
    assert {a.get("job_id", job_id) for a in ignored} == {job_id}
    return str(job_id)


async def test_alert_storm_over_two_gateways_sharing_redis_acts_once(
    shared_gateways: list[Gateway], store: SqliteTriggerStore
) -> None:
    """20 identical Alertmanager posts spread over two gateways: one command, 19 ignored."""
    trigger, secret = await store.create(
        cluster="demo", app="shop", action="scale", service="web", options=TriggerOptions(step=2)
    )
    body = raw("alertmanager_firing.json")
    answers = await _spread(shared_gateways, trigger, secret, body, 20)
    job_id = _acted_once(answers)
    late = await _spread(shared_gateways, trigger, secret, body, 2)
    assert [(s, a["job_id"]) for s, a in late] == [(200, job_id)] * 2
    (command,) = await published(shared_gateways[0])
    assert command.job_id == job_id


async def test_resolve_on_one_gateway_rearms_an_alert_fired_on_the_other(
    shared_gateways: list[Gateway], store: SqliteTriggerStore
) -> None:
    """Firing acts on A and is ignored on B; a resolve on B re-arms it for A."""
    one, other = shared_gateways
    trigger, secret = await store.create(
        cluster="demo",
        app="shop",
        action="scale",
        service="web",
        options=TriggerOptions(scale_in_on_resolve=True),
    )
    firing = raw("alertmanager_firing.json")
    resolved = mutated("alertmanager_firing.json", ("status",), "resolved")
    assert (await post(one, trigger, secret, firing))[0] == 202
    assert (await post(other, trigger, secret, firing))[0] == 200
    assert (await post(other, trigger, secret, resolved))[0] == 202
    assert (await post(one, trigger, secret, firing))[0] == 202
    assert len(await published(one)) == 3


async def test_github_delivery_replayed_to_the_other_gateway_is_ignored(
    shared_gateways: list[Gateway], store: SqliteTriggerStore
) -> None:
    """A signed GitHub delivery accepted by A and redelivered to B: ignored with A's job."""
    one, other = shared_gateways
    trigger, secret = await image_trigger(
        store, "ghcr.io/codertocat/hello-world", signature="github", signing_secret=GITHUB_KEY
    )
    body = mutated(
        "github_registry_package_published.json",
        ("registry_package", "package_version", "container_metadata", "tag", "name"),
        "v1.2.0",
    )
    headers = {
        **JSON,
        "X-GitHub-Event": "registry_package",
        "X-GitHub-Delivery": "d7a0a1f0-0002",
        "X-Hub-Signature-256": "sha256="
        + hmac.new(GITHUB_KEY.encode(), body, hashlib.sha256).hexdigest(),
    }
    status, answer = await post(one, trigger, secret, body, headers)
    assert status == 202, answer
    status, again = await post(other, trigger, secret, body, headers)
    assert (status, again["status"], again["job_id"]) == (200, "ignored", answer["job_id"])
    assert "delivery d7a0a1f0-0002 was already received" in again["detail"]
    assert len(await published(one)) == 1


async def test_timestamped_signature_replayed_to_the_other_gateway_is_refused(
    shared_gateways: list[Gateway], store: SqliteTriggerStore, client: Any, redis_prefix: str
) -> None:
    """A timestamped request accepted by A is 409 on B; Redis holds only the signature's hash."""
    one, other = shared_gateways
    trigger, secret = await image_trigger(
        store,
        "svendowideit/testhook",
        signature="timestamped",
        signing_secret="k3y-signing-0123456",
    )
    body = raw("dockerhub_push.json")
    stamp = int(time.time())
    given = hmac.new(
        b"k3y-signing-0123456", f"{stamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    headers = {**JSON, "X-Signature": f"t={stamp},v1={given}"}
    status, answer = await post(one, trigger, secret, body, headers)
    assert status == 202, answer
    status, answer = await post(other, trigger, secret, body, headers)
    assert (status, answer["error"]) == (409, "replayed_request")
    assert len(await published(one)) == 1
    names = [k.decode() async for k in client.scan_iter(match=f"{redis_prefix}recent:*")]
    hashed = hashlib.sha256(given.encode()).hexdigest()
    assert f"{redis_prefix}recent:signature:{trigger.id}:{hashed}" in names
    assert not any(given in name for name in names)


async def test_pushed_digest_sent_to_both_gateways_deploys_once(
    shared_gateways: list[Gateway], store: SqliteTriggerStore
) -> None:
    """One Harbor push sent ten times to each gateway, then another tag of it: one command."""
    trigger, secret = await image_trigger(store, "hub.harbor.com/test-webhook/debian")
    body = raw("harbor_push_default.json")
    answers = await _spread(shared_gateways, trigger, secret, body, 20)
    job_id = _acted_once(answers)
    other_tag = mutated("harbor_push_default.json", ("event_data", "resources", 0, "tag"), "1.2")
    status, answer = await post(shared_gateways[1], trigger, secret, other_tag)
    assert (status, answer["job_id"]) == (200, job_id)
    assert len(await published(shared_gateways[0])) == 1


async def test_redis_down_trigger_calls_still_succeed_deduplicated_per_gateway(
    settings: Settings, store: SqliteTriggerStore, bus: AmqpBus, redis_prefix: str
) -> None:
    """Redis unreachable: a storm and a repeated push act once per gateway, a cooldown holds."""
    down = settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_prefix=redis_prefix)
    trigger, secret = await store.create(
        cluster="demo", app="shop", action="scale", service="web", options=TriggerOptions(step=2)
    )
    pushed, pushed_secret = await image_trigger(store, "svendowideit/testhook")
    cooled, cooled_secret = await store.create(
        cluster="demo", app="shop", action="redeploy", policy=PolicyChanges(cooldown=60)
    )
    with capture_logs() as logs:
        async with running_gateways(down, store, bus, 1) as gateways:
            alerts = raw("alertmanager_firing.json")
            _acted_once(await _spread(gateways, trigger, secret, alerts, 20))
            push = raw("dockerhub_push.json")
            _acted_once(await _spread(gateways, pushed, pushed_secret, push, 5))
            answers = await _spread(gateways, cooled, cooled_secret, b"", 3)
            assert Counter(status for status, _ in answers) == {202: 1, 200: 2}
    assert len(await published(settings.amqp_url)) == 3
    for event in ("gateway.recent_unavailable", "gateway.limits_unavailable"):
        assert len([e for e in logs if e["event"] == event]) == 1, event


@pytest.mark.unit
def test_a_failed_redis_call_pauses_redis_for_a_while() -> None:
    """After a failure Redis is left alone for `pause` seconds, then tried again."""
    now = [100.0]
    outage = RedisOutage("gateway.test_unavailable", pause=5, clock=lambda: now[0])
    assert outage.available
    outage.failed("claim", ConnectionError("refused"))
    assert not outage.available
    now[0] += 4.9
    assert not outage.available
    now[0] += 0.2
    assert outage.available


@pytest.fixture
async def hung_redis() -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server that accepts and reads but never answers: a Redis that hangs.

    Yields its URL and the list of connections it accepted (their numbers).
    """
    accepted: list[int] = []
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted) + 1)
        held.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"redis://127.0.0.1:{port}/0", accepted
        for writer in held:
            writer.close()


async def test_a_hung_redis_costs_one_timeout_not_one_per_call(
    settings: Settings,
    store: SqliteTriggerStore,
    bus: AmqpBus,
    redis_prefix: str,
    hung_redis: tuple[str, list[int]],
) -> None:
    """Redis accepts connections and never answers: the first call waits for its timeout,
    the calls after it use the gateway's memory at once (no new connection to Redis), and
    the policy still holds (one redeploy, then the cooldown)."""
    url, accepted = hung_redis
    hung = settings.with_(redis_url=url, redis_prefix=redis_prefix)
    cooled, secret = await store.create(
        cluster="demo", app="shop", action="redeploy", policy=PolicyChanges(cooldown=60)
    )
    async with running_gateways(hung, store, bus, 1) as (gateway,):
        statuses = []
        for _ in range(10):
            async with gateway.http.post(gateway.call_url(cooled, secret)) as response:
                statuses.append(response.status)
        tried = len(accepted)
    assert statuses == [202] + [200] * 9
    # The first call's Redis attempts (a connection each: one try and one retry), and no
    # connection at all for the nine calls made while Redis was paused.
    assert 1 <= tried <= 2, accepted
    assert len(await published(settings.amqp_url)) == 1
