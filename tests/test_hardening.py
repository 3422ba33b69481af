"""Hardening (issue 13): input bounds, names, admin brute force, short secrets."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from gateway.app import create_app
from shared.broker import AmqpBus
from shared.jobs import JobRecord, JobStore
from shared.messages import new_job_id
from shared.settings import Settings
from shared.store import SqliteTriggerStore
from shared.triggers import TriggerOptions, new_secret, new_trigger_id
from tests.support.broker import published
from tests.support.cli import run_cli
from tests.support.gateways import ADMIN_TOKEN, Gateway, running_gateways
from tests.support.messages import result_event
from tests.test_event_calls import JSON, image_trigger, post
from tests.test_sources import mutated


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This module's gateways serve the admin API."""
    return settings.with_(admin_token=ADMIN_TOKEN)


@pytest.mark.unit
@pytest.mark.parametrize("field", ["cluster", "app", "service"])
async def test_names_ending_in_a_newline_are_refused(gateway: Gateway, field: str) -> None:
    """A name with a trailing newline is not a name: the admin API refuses it, nothing is created."""
    body = {"cluster": "demo", "app": "shop", "action": "scale", "service": "web"}
    body[field] = f"{body[field]}\n"
    status, answer = await gateway.admin("POST", "/v1/triggers", body)
    assert 400 <= status < 500, answer
    status, listed = await gateway.admin("GET", "/v1/triggers")
    assert listed["triggers"] == []


@pytest.mark.unit
async def test_wrong_admin_tokens_are_limited_and_the_right_one_still_works(
    gateway: Gateway,
) -> None:
    """Past the limit, wrong admin tokens get 429; the right token is still served."""
    limit = gateway.settings.auth_failures_per_minute
    statuses = [
        (await gateway.admin("GET", "/v1/triggers", token=f"wrong-token-{i:08d}"))[0]
        for i in range(limit + 2)
    ]
    assert statuses == [401] * limit + [429] * 2
    status, _ = await gateway.admin("GET", "/v1/triggers")
    assert status == 200


@pytest.mark.unit
def test_a_short_admin_token_is_refused_at_start() -> None:
    """TRIGGERS_ADMIN_TOKEN shorter than 16 characters stops the gateway with one clear line."""
    with pytest.raises(ValueError, match="TRIGGERS_ADMIN_TOKEN must be at least 16"):
        Settings.from_env({"TRIGGERS_ADMIN_TOKEN": "x"})


@pytest.mark.unit
async def test_a_one_character_signing_secret_is_refused(store: SqliteTriggerStore) -> None:
    """A signing secret shorter than 16 characters cannot be set."""
    with pytest.raises(ValueError, match="at least 16"):
        await store.create(
            cluster="demo",
            app="shop",
            action="redeploy",
            options=TriggerOptions(signature="hmac", signing_secret="k"),
        )


def _replace_with_directory(path: Path) -> None:
    """A directory where the database file was: SQLite says "unable to open database file"."""
    for leftover in path.parent.glob(f"{path.name}*"):
        leftover.unlink()
    path.mkdir()


async def test_a_store_outage_is_503_with_retry_after_and_one_log_line(
    gateway: Gateway, store: SqliteTriggerStore, settings: Settings
) -> None:
    """The database gone: every call is 503 store_unavailable with Retry-After, logged once."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    _replace_with_directory(Path(settings.database.removeprefix("sqlite:///")))
    made_up = msgspec.structs.replace(trigger, id=new_trigger_id())
    with capture_logs() as logs:
        for _ in range(20):
            async with gateway.http.get(gateway.call_url(made_up, secret)) as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "5"
                assert (await response.json())["error"] == "store_unavailable"
    events = [entry["event"] for entry in logs]
    assert events.count("gateway.store_unavailable") == 1
    assert "gateway.unhandled_error" not in events


@pytest.mark.unit
async def test_unauthenticated_rejections_are_one_audit_entry_per_address_and_minute(
    settings: Settings, store: SqliteTriggerStore, bus: AmqpBus
) -> None:
    """200 wrong secrets from one address leave at most three audit rows, counting all 200."""
    trigger, _ = await store.create(cluster="demo", app="shop", action="redeploy")
    async with running_gateways(settings, store, bus, 1) as (gateway,):
        for _ in range(200):
            async with gateway.http.get(gateway.call_url(trigger, new_secret())) as response:
                assert response.status in (403, 429)
    entries = await store.list_audit(trigger_id=trigger.id, limit=1000)
    # The first of the minute as it is; the rest as one entry per minute (two at most).
    assert len(entries) <= 3
    assert sum(e.count for e in entries) == 200
    assert entries[0].reason == "unauthenticated"


@pytest.mark.unit
async def test_audit_entries_older_than_the_retention_are_pruned(
    settings: Settings, store: SqliteTriggerStore, bus: AmqpBus
) -> None:
    """With TRIGGERS_AUDIT_RETENTION of one second, an entry is gone a few seconds later."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    async with running_gateways(settings.with_(audit_retention=1.0), store, bus, 1) as (gateway,):
        async with gateway.http.get(gateway.call_url(trigger, secret)) as response:
            assert response.status == 202
        async with asyncio.timeout(15):
            while not await store.list_audit(trigger_id=trigger.id):
                await asyncio.sleep(0.1)
            while await store.list_audit(trigger_id=trigger.id):
                await asyncio.sleep(0.2)


async def _status_of(gateway: Gateway, url: str) -> int:
    async with gateway.http.get(url) as response:
        return response.status


@pytest.mark.unit
async def test_revocation_and_rotation_reach_every_gateway_well_before_the_cache_ttl(
    settings: Settings, store: SqliteTriggerStore, bus: AmqpBus
) -> None:
    """With a 60 s cache, a revocation or `rotate --grace 0` made elsewhere stops calls at once."""
    revoked, revoked_secret = await store.create(cluster="demo", app="shop", action="redeploy")
    rotated, old_secret = await store.create(cluster="demo", app="shop", action="redeploy")
    slow_cache = settings.with_(trigger_cache_ttl=60.0)
    async with running_gateways(slow_cache, store, bus, 2) as gateways:
        urls = [
            (g, g.call_url(revoked, revoked_secret), g.call_url(rotated, old_secret))
            for g in gateways
        ]
        for gateway, first, second in urls:  # both triggers cached in both gateways
            assert await _status_of(gateway, first) == 202
            assert await _status_of(gateway, second) == 202
        await store.revoke(revoked.id)  # as the CLI does, straight in the store
        await store.rotate(rotated.id, grace=0)
        async with asyncio.timeout(3):  # the cache alone would keep them for 60 s
            for gateway, first, second in urls:
                while await _status_of(gateway, first) != 403:
                    await asyncio.sleep(0.05)
                while await _status_of(gateway, second) != 403:
                    await asyncio.sleep(0.05)


async def test_a_huge_numeric_tag_is_422_not_500(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """A 4,301-digit tag (past int()'s limit) and a 129-character tag are refused as unusable."""
    trigger, secret = await image_trigger(store, None, semver=">=1.0")
    for tag in ("1" * 4301, "v" * 129):
        body = mutated("dockerhub_push.json", ("push_data", "tag"), tag)
        status, answer = await post(gateway, trigger, secret, body, JSON)
        assert (status, answer["error"]) == (422, "unusable_body"), answer
        assert tag not in answer["detail"]
    assert await published(gateway) == []


@pytest.mark.unit
async def test_json_nested_a_thousand_deep_is_a_4xx(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """Bodies nested 1,000 deep: 422 on a trigger, 400 on the admin API, never 500."""
    trigger, secret = await image_trigger(store, None)
    deep = b"[" * 1000 + b"]" * 1000
    status, answer = await post(gateway, trigger, secret, deep, JSON)
    assert (status, answer["error"]) == (422, "unrecognised_body")
    deep_object = b'{"a":' * 1000 + b"1" + b"}" * 1000
    async with gateway.http.post(
        f"{gateway.url}/v1/triggers",
        data=deep_object,
        headers={**JSON, "Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_json"


async def test_a_60_kb_alert_group_key_is_kept_as_a_short_hash(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """A sender's 60 KB group key is stored and remembered as its hash; a re-send is still ignored."""
    trigger, secret = await store.create(
        cluster="demo", app="shop", action="scale", service="web", options=TriggerOptions(step=1)
    )
    body = mutated("alertmanager_firing.json", ("groupKey",), "g" * 60_000)
    status, answer = await post(gateway, trigger, secret, body, JSON)
    assert status == 202, answer
    status, again = await post(gateway, trigger, secret, body, JSON)
    assert (status, again["status"]) == (200, "ignored")
    (command,) = await published(gateway)
    assert command.source.origin is not None
    assert len(command.source.origin.alert_key or "") <= 300
    assert len(msgspec.json.encode(command)) < 10_000


ALERTS = 3000
GROUP_KEY_BYTES = 60_000


@pytest.mark.slow
async def test_3000_alerts_with_60_kb_group_keys_leave_little_in_memory(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """3,000 accepted alerts with distinct 60 KB group keys (180 MB of keys) leave the gateway
    holding under 4 KB each, measured as the bytes still allocated afterwards (tracemalloc)."""
    trigger, secret = await store.create(
        cluster="demo", app="shop", action="scale", service="web", options=TriggerOptions(step=1)
    )
    statuses: dict[int, int] = {}

    async def alert(number: int) -> None:
        key = f"{number:06d}" + "g" * (GROUP_KEY_BYTES - 6)
        status, _ = await post(
            gateway, trigger, secret, mutated("alertmanager_firing.json", ("groupKey",), key), JSON
        )
        statuses[status] = statuses.get(status, 0) + 1

    await alert(-1)  # what the first call sets up once (connections, caches) is not counted
    gc.collect()
    tracemalloc.start()
    try:
        for first in range(0, ALERTS, 20):
            await asyncio.gather(*(alert(n) for n in range(first, first + 20)))
        await asyncio.sleep(0.2)  # the audit trail's write-behind flushes what it holds
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"{ALERTS} alerts: {kept / 1e6:.1f} MB kept, {kept / ALERTS:.0f} bytes each")
    assert statuses == {202: ALERTS + 1}
    assert kept < ALERTS * 4_000, kept


@pytest.mark.unit
async def test_a_job_id_shows_the_outcome_but_not_where_the_cluster_runs(
    gateway: Gateway, jobs: JobStore
) -> None:
    """Without the admin token a job hides endpoints, paths, contexts, images and callers."""
    job_id = new_job_id()
    infra = (
        "cannot reach the Kubernetes API of cluster 'demo' (https://localhost:6443): "
        "kubeconfig /etc/kube/prod.yaml is unusable for context 'admin@prod'; will retry"
    )
    event = msgspec.structs.replace(result_event(job_id, status="failed"), error=infra)
    await jobs.record(JobRecord.from_event(event))
    async with gateway.http.get(f"{gateway.url}/v1/jobs/{job_id}") as response:
        assert response.status == 200
        shown = await response.text()
    for hidden in ("localhost", "6443", "/etc/kube", "admin@prod", "nginx:1.27", "10.0.0.4"):
        assert hidden not in shown
    job = json.loads(shown)
    assert job["status"] == "failed"
    assert "cannot reach the Kubernetes API of cluster 'demo'" in job["result"]["error"]
    assert job["result"]["after"]["web"]["replicas"] == 5
    status, full = await gateway.admin("GET", "/v1/jobs?limit=10")
    assert status == 200
    assert full["jobs"][0]["result"]["error"] == infra
    async with gateway.http.get(
        f"{gateway.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as response:
        assert (await response.json())["source"]["remote"] == "10.0.0.4"


class CountingJobs:
    """A job store that counts `get` calls."""

    def __init__(self, inner: JobStore) -> None:
        self.inner = inner
        self.reads = 0

    async def get(self, job_id: str) -> JobRecord | None:
        """Count, then read."""
        self.reads += 1
        return await self.inner.get(job_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.unit
async def test_unknown_job_ids_cost_at_most_two_reads_each(
    settings: Settings, store: SqliteTriggerStore, bus: AmqpBus, jobs: JobStore
) -> None:
    """Fifty lookups of made-up job ids at once: 404 each, with at most two store reads each."""
    counting = CountingJobs(jobs)
    app = create_app(settings, store=store, bus=bus, jobs=counting)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:

            async def lookup() -> int:
                async with http.get(server.make_url(f"/v1/jobs/{new_job_id()}")) as response:
                    return response.status

            statuses = await asyncio.gather(*(lookup() for _ in range(50)))
    finally:
        await server.close()
    assert statuses == [404] * 50
    assert counting.reads <= 2 * 50  # four each before


async def test_rich_markup_in_a_user_agent_is_shown_as_text_by_history(
    jobs: JobStore, env: dict[str, str]
) -> None:
    """A caller's User-Agent holding Rich markup neither crashes `triggers history` nor links."""
    agent = "[/]evil [link=http://localhost/x]click[/link]"
    event = result_event(new_job_id())
    event = msgspec.structs.replace(
        event, source=msgspec.structs.replace(event.source, user_agent=agent)
    )
    await jobs.record(JobRecord.from_event(event))
    code, out, err = await run_cli({**env, "COLUMNS": "400"}, "history")
    assert code == 0, err
    assert "[/]evil [link=http://localhost/x]click[/link]" in out
