"""Job status and wait-for-result, end to end on the real RabbitMQ, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from shared.broker import AmqpBus
from shared.settings import Settings
from shared.store import TriggerStore
from shared.topology import COMMAND_QUEUES
from tests.support.broker import broker_queues, queue_depth
from tests.support.cli import created_scale_trigger
from tests.support.databases import on_both_databases
from tests.support.gateways import Gateway
from tests.support.processes import service_process
from tests.support.waiting import eventually
from tests.support.workers import Results, WrappedOrchestrator
from workers.orchestrators.local import LocalOrchestrator
from workers.recorder import Recorder
from workers.worker import Worker

# Every test here runs on each database: the trigger store and job history both in it.
pytestmark = on_both_databases


class GatedOrchestrator(WrappedOrchestrator):
    """The local cluster behind a gate: commands wait inside the adapter until it opens."""

    def __init__(self, inner: LocalOrchestrator) -> None:
        super().__init__(inner)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def before_change(self, job_id: str) -> None:
        """Wait for the gate to open."""
        self.entered.set()
        await self.gate.wait()


@pytest.fixture
async def gated(
    settings: Settings, cluster: LocalOrchestrator, bus: AmqpBus
) -> AsyncIterator[GatedOrchestrator]:
    """A worker whose commands block in the adapter until the test opens the gate."""
    orchestrator = GatedOrchestrator(cluster)
    amqp = AmqpBus(settings.amqp_url, role="test-gated-worker")
    await amqp.start()
    running = Worker(settings, amqp, orchestrator)
    await running.start()
    yield orchestrator
    orchestrator.gate.set()
    await running.stop()
    await amqp.close()


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def job_in_state(http: aiohttp.ClientSession, url: str, status: str) -> dict[str, Any]:
    """GET the job until the recorder has it in `status` (bounded)."""

    async def probe() -> dict[str, Any] | None:
        code, body = await _get(http, url)
        return body if code == 200 and body["status"] == status else None

    return await eventually(probe, what=f"job at {url} reaching {status!r}")


async def test_job_status_goes_accepted_running_succeeded(
    gateway: Gateway,
    store: TriggerStore,
    recorder: Recorder,
    gated: GatedOrchestrator,
    results: Results,
) -> None:
    """GET status_url shows accepted at once, running while the adapter works, then the result."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="scale", service="web")
    url = gateway.call_url(trigger, secret) + "&type=scale_out&step=2"
    async with gateway.http.post(url) as response:
        accepted = await response.json()
        assert response.status == 202, accepted
    status_url = accepted["status_url"]
    assert status_url == f"{gateway.settings.public_url}/v1/jobs/{accepted['job_id']}"
    assert response.headers["Location"] == status_url
    local_url = status_url.replace(gateway.settings.public_url, gateway.url)

    # Read-your-writes: the gateway that answered knows the job at once, written or not.
    code, first = await _get(gateway.http, local_url)
    assert code == 200
    assert first["status"] in ("accepted", "running")
    assert first["accepted_at"] is not None
    assert first["result"] is None

    await asyncio.wait_for(gated.entered.wait(), 10)
    running = await job_in_state(gateway.http, local_url, "running")
    assert running["started_at"] is not None
    assert running["result"] is None
    assert running["status_url"] == status_url

    gated.gate.set()
    await results.wait_for(accepted["job_id"])
    done = await job_in_state(gateway.http, local_url, "succeeded")
    assert done["result"]["before"]["web"]["replicas"] == 2
    assert done["result"]["after"]["web"]["replicas"] == 4
    assert done["finished_at"] is not None
    assert done["duration_ms"] is not None
    assert (done["cluster"], done["app"], done["service"]) == ("demo", "shop", "web")


async def test_job_status_ends_failed_or_skipped(
    gateway: Gateway,
    store: TriggerStore,
    recorder: Recorder,
    worker: Worker,
    results: Results,
) -> None:
    """A job for a missing app ends failed with its error; a scale-in at zero ends skipped."""
    gone, gone_secret = await store.create(cluster="demo", app="gone", action="redeploy")
    async with gateway.http.post(gateway.call_url(gone, gone_secret)) as response:
        failed = await response.json()
    await results.wait_for(failed["job_id"])
    local = failed["status_url"].replace(gateway.settings.public_url, gateway.url)
    body = await job_in_state(gateway.http, local, "failed")
    assert "'gone' not found" in body["result"]["error"]
    assert "error" not in body  # a top-level `error` is reserved for error codes

    scale, scale_secret = await store.create(
        cluster="demo", app="shop", action="scale", service="api"
    )
    url = gateway.call_url(scale, scale_secret) + "&type=scale_in&step=1"
    for expected in ("succeeded", "skipped"):  # api has 1 replica: 1 -> 0, then nothing to do
        async with gateway.http.get(url) as response:
            job = await response.json()
        await results.wait_for(job["job_id"])
        local = job["status_url"].replace(gateway.settings.public_url, gateway.url)
        body = await job_in_state(gateway.http, local, expected)
        assert body["result"]["after"]["api"]["replicas"] == 0


async def test_unknown_and_malformed_job_ids(gateway: Gateway) -> None:
    """An unknown job id answers 404 job_not_found; a malformed one 400 invalid_job_id."""
    code, body = await _get(gateway.http, f"{gateway.url}/v1/jobs/{'0' * 32}")
    assert (code, body["error"]) == (404, "job_not_found")
    assert "7 days" in body["detail"]
    code, body = await _get(gateway.http, f"{gateway.url}/v1/jobs/not-a-job")
    assert (code, body["error"]) == (400, "invalid_job_id")


async def test_wait_answers_200_with_the_result(
    gateway: Gateway, store: TriggerStore, worker: Worker
) -> None:
    """wait=N answers 200 with the job and its result once the worker succeeded."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    async with gateway.http.post(gateway.call_url(trigger, secret) + "&wait=20") as response:
        body = await response.json()
        assert response.status == 200, body
    assert body["status"] == "succeeded"
    assert body["accepted_at"] is not None
    assert body["finished_at"] is not None
    assert body["result"]["status"] == "succeeded"
    assert {n: s["revision"] for n, s in body["result"]["after"].items()} == {"api": 2, "web": 2}
    assert body["status_url"].endswith(f"/v1/jobs/{body['job_id']}")
    assert response.headers["X-Request-ID"] == body["correlation_id"]


async def test_wait_answers_422_when_the_job_failed(
    gateway: Gateway, store: TriggerStore, worker: Worker
) -> None:
    """A failed job answers 422 job_failed (curl --fail fails; curl --retry does not re-run it)."""
    trigger, secret = await store.create(cluster="demo", app="gone", action="redeploy")
    async with gateway.http.get(gateway.call_url(trigger, secret) + "&wait=20") as response:
        body = await response.json()
        assert response.status == 422, body
    assert body["error"] == "job_failed"
    assert "'gone' not found" in body["detail"]
    assert body["status"] == "failed"
    assert body["result"]["error"] == body["detail"]
    assert body["job_id"]


async def test_wait_answers_202_when_time_runs_out(
    gateway: Gateway, store: TriggerStore, bus: AmqpBus
) -> None:
    """With no worker, wait=0.5 answers 202 with the job id and status_url after half a second."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    started = time.monotonic()
    async with gateway.http.get(gateway.call_url(trigger, secret) + "&wait=0.5") as response:
        body = await response.json()
        assert response.status == 202, body
    assert time.monotonic() - started >= 0.5
    assert body["status"] == "accepted"
    assert body["waited"] == 0.5
    assert body["status_url"].endswith(f"/v1/jobs/{body['job_id']}")
    assert "no result within 0.5 s" in body["detail"]
    # The command is still queued for a worker: timing out cancels nothing.
    assert await queue_depth(gateway.settings.amqp_url, COMMAND_QUEUES["redeploy"]) == 1


async def _audited(store: TriggerStore, trigger_id: str) -> tuple[str, int, str | None]:
    """The one audit entry of a trigger, once written: outcome, status, wait outcome."""
    for _ in range(100):
        entries = await store.list_audit(trigger_id=trigger_id)
        if entries:
            (entry,) = entries
            return entry.outcome, entry.status, entry.wait_outcome
        await asyncio.sleep(0.05)
    raise AssertionError("no audit entry was written")


async def test_waiting_calls_are_audited_accepted_with_what_they_waited_for(
    gateway: Gateway, store: TriggerStore, worker: Worker
) -> None:
    """A wait=N call that published is `accepted` in the audit trail whether its job
    succeeded (200) or failed (422); the job's result is in `wait_outcome`."""
    shop, shop_secret = await store.create(cluster="demo", app="shop", action="redeploy")
    gone, gone_secret = await store.create(cluster="demo", app="gone", action="redeploy")
    plain, plain_secret = await store.create(cluster="demo", app="shop", action="redeploy")
    async with gateway.http.get(gateway.call_url(shop, shop_secret) + "&wait=20") as response:
        assert response.status == 200
    async with gateway.http.get(gateway.call_url(gone, gone_secret) + "&wait=20") as response:
        assert response.status == 422
    async with gateway.http.get(gateway.call_url(plain, plain_secret)) as response:
        assert response.status == 202
    assert await _audited(store, shop.id) == ("accepted", 200, "succeeded")
    assert await _audited(store, gone.id) == ("accepted", 422, "failed")
    assert await _audited(store, plain.id) == ("accepted", 202, None)


async def test_a_wait_that_runs_out_is_audited_accepted_and_timed_out(
    gateway: Gateway, store: TriggerStore, bus: AmqpBus
) -> None:
    """With no worker, the wait=0.2 call is `accepted` with `wait_outcome` timed_out."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    async with gateway.http.get(gateway.call_url(trigger, secret) + "&wait=0.2") as response:
        assert response.status == 202
    assert await _audited(store, trigger.id) == ("accepted", 202, "timed_out")


@pytest.mark.parametrize("wait", ["61", "-1", "abc", "", "1e3"])
async def test_bad_wait_is_400_and_nothing_is_published(
    gateway: Gateway, store: TriggerStore, wait: str
) -> None:
    """wait must be 0..60 seconds; anything else is a 400 that says so, and nothing runs."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    async with gateway.http.get(gateway.call_url(trigger, secret) + f"&wait={wait}") as response:
        body = await response.json()
        assert response.status == 400, body
    assert body["error"] == "invalid_wait"
    assert "from 0 to 60" in body["detail"]
    assert await queue_depth(gateway.settings.amqp_url, COMMAND_QUEUES["redeploy"]) == 0


async def test_a_hundred_waiting_calls_share_one_results_queue(
    gateway: Gateway,
    store: TriggerStore,
    settings: Settings,
    cluster: LocalOrchestrator,
    bus: AmqpBus,
) -> None:
    """100 concurrent wait calls all get their own result, and the broker gains no queue."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    url = gateway.call_url(trigger, secret) + "&wait=60"
    before = broker_queues(settings.amqp_url)

    async def call(http: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        async with http.get(url) as response:
            return response.status, await response.json()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:
        calls = [asyncio.create_task(call(http)) for _ in range(100)]

        # Every command is confirmed (so every call is waiting) before any worker runs.
        async def all_queued() -> bool | None:
            depth = await queue_depth(settings.amqp_url, COMMAND_QUEUES["redeploy"])
            return True if depth == 100 else None

        await eventually(all_queued, what="100 commands queued", within=30)
        during = await asyncio.to_thread(broker_queues, settings.amqp_url)
        assert during == before, "waiting calls must not declare queues"
        gateway_queues = [q for q in during if q.startswith("triggers.results.test-gateway.")]
        assert len(gateway_queues) == 1, during  # the one results queue of this gateway
        async with gateway.http.get(f"{gateway.url}/metrics") as response:
            assert "triggers_gateway_waiting_requests 100.0" in await response.text()

        amqp = AmqpBus(settings.amqp_url, role="test-worker")
        await amqp.start()
        worker = Worker(settings, amqp, cluster)
        await worker.start()
        try:
            answers = await asyncio.wait_for(asyncio.gather(*calls), 60)
        finally:
            await worker.stop()
            await amqp.close()
    assert [code for code, _ in answers] == [200] * 100
    assert len({body["job_id"] for _, body in answers}) == 100
    assert all(body["status"] == "succeeded" for _, body in answers)
    # Each call got its own job's result, not a neighbour's.
    assert all(body["result"]["job_id"] == body["job_id"] for _, body in answers)
    revisions = sorted(body["result"]["after"]["web"]["revision"] for _, body in answers)
    assert revisions == list(range(2, 102))


async def _stored_job(database_url: str, job_id: str) -> dict[str, Any] | None:
    """The job's row as the database itself holds it, read without the store's code."""
    query = "SELECT status, accepted_at, started_at, finished_at FROM jobs WHERE job_id = "
    if database_url.startswith("postgresql://"):
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(query + "$1", job_id)
        finally:
            await conn.close()
        return dict(row) if row else None
    with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as db:
        db.row_factory = sqlite3.Row
        found = db.execute(query + "?", (job_id,)).fetchone()
    return dict(found) if found else None


async def test_gateway_worker_and_recorder_processes_share_the_database(
    settings: Settings, env: dict[str, str], cluster: LocalOrchestrator, bus: AmqpBus
) -> None:
    """`triggers gateway`, `worker` and `recorder` start on TRIGGERS_DATABASE (PostgreSQL too),
    serve a wait=5 call with its result, and GET /v1/jobs/{id} shows the recorded job."""
    query = await created_scale_trigger(env)
    async with (
        service_process(env, "recorder"),
        service_process(env, "worker"),
        service_process(env, "gateway") as gateway,
        aiohttp.ClientSession() as http,
    ):
        call = f"{gateway.url}/hook/trigger?{query}&type=scale_out&step=1&wait=5"
        async with http.post(call) as response:
            answer = await response.json()
            assert response.status == 200, answer
        assert answer["status"] == "succeeded"
        assert answer["result"]["after"]["web"]["replicas"] == 3
        job_url = answer["status_url"].replace(settings.public_url, gateway.url)
        job = await job_in_state(http, job_url, "succeeded")
    assert job["job_id"] == answer["job_id"]
    assert job["result"] == answer["result"]
    assert None not in (job["accepted_at"], job["started_at"], job["finished_at"])
    stored = await _stored_job(settings.database, job["job_id"])
    assert stored is not None
    assert stored["status"] == "succeeded"
    assert None not in (stored["accepted_at"], stored["started_at"], stored["finished_at"])


async def test_another_gateway_finds_a_job_accepted_a_moment_ago(
    gateway: Gateway, store: TriggerStore, settings: Settings, bus: AmqpBus
) -> None:
    """Accepted records are written behind, in batches: a second gateway on the same
    database, asked right after the 202, waits for the record instead of answering 404."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    other = TestServer(create_app(settings, store=store, bus=bus), host="127.0.0.1")
    await other.start_server()
    try:
        async with gateway.http.post(gateway.call_url(trigger, secret)) as response:
            accepted = await response.json()
            assert response.status == 202, accepted
        base = str(other.make_url("")).rstrip("/")
        code, job = await _get(gateway.http, f"{base}/v1/jobs/{accepted['job_id']}")
        assert code == 200, job
        assert job["status"] == "accepted"
        assert job["accepted_at"] is not None
        unknown = f"{base}/v1/jobs/{'0' * 32}"
        code, missing = await _get(gateway.http, unknown)
        assert (code, missing["error"]) == (404, "job_not_found")
    finally:
        await other.close()
