"""Operating it: metrics, readiness, one correlation id end to end, history, tail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from shared.broker import AmqpBus
from shared.errors import ConflictError
from shared.jobs import JobRecord, JobStore, SqliteJobStore, open_job_store
from shared.messages import Target, utcnow
from shared.metrics import serve_metrics
from shared.settings import Settings
from shared.store import TriggerStore
from shared.triggers import trigger_call_url
from tests.proxy import TcpProxy
from tests.support.broker import through_proxy
from tests.support.cli import created_scale_trigger, triggers_cli
from tests.support.databases import on_both_databases
from tests.support.gateways import Gateway, Samples, metric_samples
from tests.support.messages import result_event
from tests.support.processes import ServiceProcess, free_port, service_process
from tests.support.waiting import eventually
from tests.support.workers import Results, WrappedOrchestrator, recorded
from triggers.render import event_line
from workers.orchestrators.base import Change, ProgressReport
from workers.orchestrators.local import LocalOrchestrator
from workers.recorder import Recorder
from workers.worker import Worker


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _scrape(http: aiohttp.ClientSession, *urls: str) -> Samples:
    """The samples of every url, together (the gateway's and a worker's /metrics)."""
    samples: Samples = {}
    for url in urls:
        async with http.get(url) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            samples.update(metric_samples(await response.text()))
    return samples


@pytest.fixture
async def worker_metrics() -> AsyncIterator[str]:
    """The in-process worker's /metrics, on a listener as `triggers worker --metrics-port`."""
    runner = await serve_metrics("127.0.0.1", 0, "worker")
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/metrics"
    await runner.cleanup()


@on_both_databases
async def test_metrics_count_calls_publishes_results_and_queues(
    gateway: Gateway,
    store: TriggerStore,
    recorder: Recorder,
    worker: Worker,
    results: Results,
    worker_metrics: str,
) -> None:
    """/metrics after traffic: calls by action and outcome, publishes, results, apply, queues."""
    metrics_urls = (f"{gateway.url}/metrics", worker_metrics)
    before = await _scrape(gateway.http, *metrics_urls)
    redeploy, redeploy_secret = await store.create(cluster="demo", app="shop", action="redeploy")
    gone, gone_secret = await store.create(cluster="demo", app="gone", action="redeploy")
    scale, scale_secret = await store.create(
        cluster="demo", app="shop", action="scale", service="web"
    )
    calls = [
        (gateway.call_url(redeploy, redeploy_secret), 202),
        (gateway.call_url(scale, scale_secret) + "&type=scale_out&step=1&wait=20", 200),
        (gateway.call_url(gone, gone_secret) + "&wait=20", 422),
        (gateway.call_url(redeploy, "ab" * 32), 403),
        (f"{gateway.url}/hook/trigger?secret=x", 400),
    ]
    job_ids = []
    for url, expected in calls:
        async with gateway.http.get(url) as response:
            body = await response.json()
            assert response.status == expected, body
            job_ids.append(body.get("job_id"))
    await results.wait_for(job_ids[0])
    # A worker counts a result after settling it, a moment after the caller has it: scrape
    # until the last of them (the dead-letter) is in, bounded.
    after = before

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    results_total = "triggers_worker_results_total"
    for _ in range(100):
        after = await _scrape(gateway.http, *metrics_urls)
        counted = sum(
            delta(results_total, action=action, status=status, orchestrator="local")
            for action in ("redeploy", "scale")
            for status in ("succeeded", "failed")
        )
        if counted == 3 and delta("triggers_worker_dead_letters_total", reason="failed") == 1:
            break
        await asyncio.sleep(0.05)

    calls_total = "triggers_gateway_calls_total"
    assert delta(calls_total, action="redeploy", outcome="accepted") == 1
    assert delta(calls_total, action="scale", outcome="succeeded") == 1
    assert delta(calls_total, action="redeploy", outcome="failed") == 1
    assert delta(calls_total, action="unknown", outcome="forbidden") == 1
    assert delta(calls_total, action="unknown", outcome="bad_request") == 1
    assert delta("triggers_publish_seconds_count", kind="command") == 3
    assert delta("triggers_publish_seconds_count", kind="result") == 3
    # Each job finished within TRIGGERS_RUNNING_NOTICE_AFTER: no `running` notice for any.
    assert delta("triggers_publish_seconds_count", kind="notice") == 0
    assert delta(results_total, action="redeploy", status="succeeded", orchestrator="local") == 1
    assert delta(results_total, action="redeploy", status="failed", orchestrator="local") == 1
    assert delta(results_total, action="scale", status="succeeded", orchestrator="local") == 1
    assert delta("triggers_worker_apply_seconds_count", orchestrator="local", action="scale") == 1
    assert delta("triggers_worker_dead_letters_total", reason="failed") == 1
    queues = ("triggers.commands.redeploy", "triggers.commands.scale", "triggers.dead")
    for queue in (*queues, "triggers.results.recorder"):
        assert ("triggers_queue_messages", frozenset({("queue", queue)})) in after
    assert ("triggers_jobs", frozenset({("status", "succeeded")})) in after
    assert _value(after, "triggers_gateway_waiting_requests") == 0


class ConflictOnce(WrappedOrchestrator):
    """The local cluster, but the first redeploy of each job hits a conflict."""

    def __init__(self, inner: LocalOrchestrator) -> None:
        super().__init__(inner)
        self.failed: set[str] = set()

    async def redeploy(
        self,
        job_id: str,
        target: Target,
        *,
        image: str | None = None,
        issued_at: datetime | None = None,
        progress: ProgressReport | None = None,
    ) -> Change:
        """Conflict once, then redeploy."""
        if job_id not in self.failed:
            self.failed.add(job_id)
            msg = "the service was changed concurrently"
            raise ConflictError(msg)
        return await super().redeploy(
            job_id, target, image=image, issued_at=issued_at, progress=progress
        )


@on_both_databases
async def test_retries_are_counted_and_the_job_shows_its_attempt(
    gateway: Gateway,
    store: TriggerStore,
    settings: Settings,
    cluster: LocalOrchestrator,
    recorder: Recorder,
    jobs: JobStore,
    worker_metrics: str,
) -> None:
    """A retried job succeeds on attempt 2; the retry counter and the job's attempt say so."""
    amqp = AmqpBus(settings.amqp_url, role="test-flaky-worker")
    await amqp.start()
    flaky = Worker(settings, amqp, ConflictOnce(cluster))
    await flaky.start()
    try:
        before = await _scrape(gateway.http, worker_metrics)
        trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
        async with gateway.http.get(gateway.call_url(trigger, secret) + "&wait=20") as response:
            body = await response.json()
            assert response.status == 200, body
        after = await _scrape(gateway.http, worker_metrics)
    finally:
        await flaky.stop()
        await amqp.close()
    assert body["result"]["attempt"] == 2
    retries = "triggers_worker_retries_total"
    assert (
        _value(after, retries, action="redeploy") - _value(before, retries, action="redeploy") == 1
    )
    job = await recorded(jobs, body["job_id"], "succeeded")
    assert job.attempt == 2


async def _readyz(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{base}/readyz") as response:
        return response.status, await response.json()


async def _readyz_becomes(http: aiohttp.ClientSession, base: str, code: int) -> dict[str, Any]:
    """Poll /readyz until it answers `code` (the client notices a cut asynchronously)."""

    async def probe() -> dict[str, Any] | None:
        status, body = await _readyz(http, base)
        return body if status == code else None

    return await eventually(probe, what=f"/readyz answering {code}", within=30)


@on_both_databases
async def test_readyz_follows_the_broker_and_waiting_works_after_it_returns(
    settings: Settings,
    store: TriggerStore,
    jobs: JobStore,
    proxy: TcpProxy,
    worker: Worker,
) -> None:
    """Cut the broker: /readyz 503 and no job recorded for a refused call; heal: a waiting
    call made before the reconnect finished gets its result, and /readyz is 200 again."""
    server = TestServer(create_app(through_proxy(settings, proxy), store=store), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    try:
        async with aiohttp.ClientSession() as http:
            # The node it publishes to is named: here the proxy in front of the broker.
            ready = {
                "status": "ready",
                "broker": "up",
                "node": f"127.0.0.1:{proxy.port}",
                "store": "up",
            }
            assert await _readyz_becomes(http, base, 200) == ready
            await proxy.cut()
            unready = await _readyz_becomes(http, base, 503)
            assert unready == {"status": "unready", "broker": "down", "node": None, "store": "up"}
            async with http.get(trigger_call_url(base, trigger, secret)) as response:
                assert response.status == 503
            assert await jobs.list() == []  # a call answered 503 leaves no `accepted` job

            await proxy.restore()
            # Called at once, before the reconnect finished (it retries every 2 s): a
            # caller who waits is given a few seconds for the results subscription to
            # come back, rather than a 503. Its one results queue came back with it.
            url = trigger_call_url(base, trigger, secret) + "&wait=20"
            async with http.get(url) as response:
                answer = await response.json()
                assert response.status == 200, answer
            assert answer["status"] == "succeeded"
            assert await _readyz_becomes(http, base, 200) == ready
    finally:
        await server.close()


@on_both_databases
async def test_readyz_is_unready_when_the_store_is_unreachable(
    settings: Settings, store: TriggerStore, bus: AmqpBus, tmp_path: Path, backend: str
) -> None:
    """A store that cannot be opened makes /readyz answer 503 store down, broker up."""
    unreadable: JobStore
    if backend == "postgresql":  # nothing listens on that port
        unreadable = open_job_store(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    else:
        unreadable = SqliteJobStore(tmp_path)  # a directory: SQLite cannot open it
    server = TestServer(create_app(settings, store=store, bus=bus, jobs=unreadable))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            status, body = await _readyz(http, str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()
    assert status == 503
    assert body == {"status": "unready", "broker": "up", "node": bus.node, "store": "down"}
    assert bus.node is not None


@pytest.fixture
async def worker_process(
    cluster: LocalOrchestrator, bus: AmqpBus, env: dict[str, str]
) -> AsyncIterator[ServiceProcess]:
    """`triggers worker --metrics-port P` on the test's cluster."""
    async with service_process(env, "worker") as running:
        yield running


@on_both_databases
async def test_one_correlation_id_from_request_through_worker_log_to_result(
    gateway: Gateway,
    store: TriggerStore,
    recorder: Recorder,
    jobs: JobStore,
    results: Results,
    worker_process: ServiceProcess,
) -> None:
    """X-Request-ID reaches the gateway's line, the worker's JSON log, the result and history."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    request_id = "ci-run-42.step-7"
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as gateway_logs:
        async with gateway.http.post(
            gateway.call_url(trigger, secret) + "&wait=20",
            headers={"X-Request-ID": request_id},
        ) as response:
            body = await response.json()
            assert response.status == 200, body
    job_id = body["job_id"]
    assert body["correlation_id"] == request_id
    assert response.headers["X-Request-ID"] == request_id

    (request_line,) = [e for e in gateway_logs if e["event"] == "gateway.request"]
    assert request_line["correlation_id"] == request_id
    assert request_line["job_id"] == job_id
    assert secret not in json.dumps(request_line, default=str)

    command_line = await worker_process.wait_logged("worker.command")
    assert command_line["correlation_id"] == request_id
    assert command_line["job_id"] == job_id
    assert command_line["status"] == "succeeded"

    (event,) = await results.wait_for(job_id)
    assert event.correlation_id == request_id
    job = await recorded(jobs, job_id, "succeeded")
    assert job.correlation_id == request_id

    # The worker process serves its own metrics.
    scraped = await _scrape(gateway.http, f"http://127.0.0.1:{worker_process.port}/metrics")
    labels = {"action": "redeploy", "status": "succeeded", "orchestrator": "local"}
    assert _value(scraped, "triggers_worker_results_total", **labels) == 1


@on_both_databases
async def test_recorder_command_records_results_and_serves_metrics(
    settings: Settings, bus: AmqpBus, jobs: JobStore, env: dict[str, str]
) -> None:
    """`triggers recorder` writes a published result into history and counts it on /metrics."""
    async with service_process(env, "recorder") as recorder_process:
        event = result_event("5" * 32, "shop")
        await bus.publish_result(event)
        job = await recorded(jobs, event.job_id, "succeeded")
        assert job.result == event
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{recorder_process.port}/metrics"
            scraped = await _scrape(http, url)
        assert _value(scraped, "triggers_recorder_events_total", status="succeeded") == 1


@pytest.fixture
async def admin_gateway(
    settings: Settings, store: TriggerStore, bus: AmqpBus
) -> AsyncIterator[Gateway]:
    """A gateway with the admin API enabled (token `s3cr3t-admin`)."""
    admin = settings.with_(admin_token="s3cr3t-admin")
    server = TestServer(create_app(admin, store=store, bus=bus), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Gateway(url=str(server.make_url("")).rstrip("/"), http=http, settings=admin)
    await server.close()


@on_both_databases
async def test_jobs_list_filters_and_needs_the_admin_token(
    admin_gateway: Gateway, jobs: JobStore
) -> None:
    """GET /v1/jobs filters by app, status and since, newest first, and wants the bearer token."""
    await jobs.record(JobRecord.from_event(result_event("a" * 32, "shop", ago=7200)))
    await jobs.record(JobRecord.from_event(result_event("b" * 32, "shop", "failed", ago=60)))
    await jobs.record(JobRecord.from_event(result_event("c" * 32, "shop", ago=30)))
    await jobs.record(JobRecord.from_event(result_event("d" * 32, "blog", ago=10)))
    base = f"{admin_gateway.url}/v1/jobs"
    auth = {"Authorization": "Bearer s3cr3t-admin"}

    async with admin_gateway.http.get(f"{base}?app=shop&since=1h", headers=auth) as response:
        body = await response.json()
        assert response.status == 200, body
    assert [j["job_id"][0] for j in body["jobs"]] == ["c", "b"]
    assert body["count"] == 2
    async with admin_gateway.http.get(f"{base}?status=failed", headers=auth) as response:
        assert [j["job_id"][0] for j in (await response.json())["jobs"]] == ["b"]
    async with admin_gateway.http.get(f"{base}?status=nope", headers=auth) as response:
        assert (response.status, (await response.json())["error"]) == (400, "invalid_status")
    async with admin_gateway.http.get(f"{base}?since=yesterday", headers=auth) as response:
        assert (response.status, (await response.json())["error"]) == (400, "invalid_since")
    async with admin_gateway.http.get(base) as response:
        assert (response.status, (await response.json())["error"]) == (401, "unauthorized")
    async with admin_gateway.http.get(base, headers={"Authorization": "Bearer wrong"}) as response:
        assert response.status == 401


async def test_jobs_list_is_refused_without_an_admin_token_configured(gateway: Gateway) -> None:
    """With no TRIGGERS_ADMIN_TOKEN, listing jobs answers 403 admin_disabled, saying what to set."""
    async with gateway.http.get(f"{gateway.url}/v1/jobs") as response:
        body = await response.json()
    assert (response.status, body["error"]) == (403, "admin_disabled")
    assert "TRIGGERS_ADMIN_TOKEN" in body["detail"]


@on_both_databases
async def test_a_result_before_accepted_never_moves_the_job_back(jobs: JobStore) -> None:
    """Events in any order: the result stays, accepted_at and started_at are filled in."""
    event = result_event("e" * 32, "shop")
    await jobs.record(JobRecord.from_event(event))
    await jobs.record(
        JobRecord(
            job_id=event.job_id,
            status="accepted",
            trigger_id=event.trigger_id,
            action="scale",
            cluster="demo",
            app="shop",
            service="web",
            issued_at=event.issued_at or utcnow(),
            accepted_at=utcnow(),
        )
    )
    job = await jobs.get(event.job_id)
    assert job is not None
    assert job.status == "succeeded"
    assert job.accepted_at is not None
    assert job.result == event


@on_both_databases
async def test_recorder_prunes_jobs_older_than_the_retention(
    settings: Settings, bus: AmqpBus, jobs: JobStore
) -> None:
    """Jobs issued before the retention (here TRIGGERS_JOB_RETENTION=1h) are forgotten."""
    retention = Settings.from_env({"TRIGGERS_JOB_RETENTION": "1h"}).job_retention
    assert retention == 3600
    keeper = Recorder(settings.with_(job_retention=retention), bus, jobs)
    await jobs.record(JobRecord.from_event(result_event("f" * 32, "shop", ago=7200)))
    await jobs.record(JobRecord.from_event(result_event("1" * 32, "shop", ago=1800)))
    assert await keeper.prune() == 1
    assert await jobs.get("f" * 32) is None
    assert await jobs.get("1" * 32) is not None


async def _cli(env: dict[str, str], *args: str, within: float = 30) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *triggers_cli(),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), within)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@on_both_databases
async def test_history_command_filters_and_prints_json_or_a_table(
    jobs: JobStore, env: dict[str, str]
) -> None:
    """`triggers history --app --status --since` lists matching jobs; --json for scripts."""
    await jobs.record(JobRecord.from_event(result_event("a" * 32, "shop", ago=7200)))
    await jobs.record(JobRecord.from_event(result_event("b" * 32, "shop", "failed", ago=60)))
    await jobs.record(JobRecord.from_event(result_event("c" * 32, "blog", ago=30)))
    code, out, err = await _cli(env, "history", "--app", "shop", "--since", "1h", "--json")
    assert code == 0, err
    assert [j["job_id"] for j in json.loads(out)] == ["b" * 32]
    code, out, err = await _cli(env, "history", "--status", "succeeded")
    assert code == 0, err
    assert "demo/blog/web" in out
    assert "demo/shop/web" in out
    assert "2 → 5 replicas" in out
    assert "curl/8.5 from 10.0.0.4" in out
    code, out, err = await _cli(env, "history", "--since", "soon")
    assert code == 2
    assert "since must be a duration" in err


@on_both_databases
async def test_tail_replays_history_then_follows_live_with_filters(
    gateway: Gateway,
    store: TriggerStore,
    jobs: JobStore,
    worker: Worker,
    results: Results,
    env: dict[str, str],
) -> None:
    """`tail --since` prints stored results first, then live ones; --service filters both."""
    await jobs.record(JobRecord.from_event(result_event("a" * 32, "shop", ago=600)))
    await jobs.record(JobRecord.from_event(result_event("b" * 32, "shop", ago=7200)))  # too old
    process = await asyncio.create_subprocess_exec(
        *triggers_cli(),
        "tail",
        "--since",
        "1h",
        "--service",
        "api",
        "--count",
        "1",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    # History holds a web job only: --service api filters it out, so tail waits for live ones.
    stderr = process.stderr

    async def banner() -> None:
        while b"Waiting for results" not in await stderr.readline():
            pass

    await asyncio.wait_for(banner(), 30)
    web, web_secret = await store.create(cluster="demo", app="shop", action="scale", service="web")
    api, api_secret = await store.create(cluster="demo", app="shop", action="scale", service="api")
    for trigger, secret in ((web, web_secret), (api, api_secret)):
        url = gateway.call_url(trigger, secret) + "&type=scale_out&step=1&wait=20"
        async with gateway.http.get(url, headers={"X-Request-ID": "deploy-99"}) as response:
            assert response.status == 200
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, err
    # A job slower than TRIGGERS_RUNNING_NOTICE_AFTER would show a RUNNING line first.
    (line,) = [x for x in out.decode().splitlines() if "RUNNING" not in x]
    assert "SUCCEEDED" in line
    assert "demo/shop/api" in line
    assert "api 1 → 2 replicas" in line
    assert "req deploy-99" in line
    assert "\x1b[" not in line  # no colour codes when stdout is not a terminal

    code, replay, replay_err = await _cli(env, "tail", "--since", "1h", "--json", "--count", "1")
    assert code == 0, replay_err
    (replayed,) = [json.loads(x) for x in replay.splitlines()]
    assert replayed["job_id"] == "a" * 32
    assert replayed["schema"] == "triggers.result.v1"


@pytest.mark.unit
def test_event_line_shows_status_change_duration_and_source() -> None:
    """A tail line reads: time, status, action, target, before → after, duration, source, ids."""
    plain = event_line(result_event("9" * 32, "shop"), colour=False)
    assert "✔ SUCCEEDED" in plain
    assert "scale    demo/shop/web" in plain
    assert "web 2 → 5 replicas" in plain
    assert "40 ms" in plain
    assert "curl/8.5 from 10.0.0.4" in plain
    assert "req req-9999" in plain
    assert plain.endswith("job 999999999999")
    coloured = event_line(result_event("9" * 32, "shop", "failed"), colour=True)
    assert "\x1b[1;31m" in coloured  # failed is bold red


async def _young_collections(http: aiohttp.ClientSession, metrics_url: str) -> float:
    async with http.get(metrics_url) as response:
        samples = metric_samples(await response.text())
    return _value(samples, "python_gc_collections_total", generation="0")


@pytest.mark.usefixtures("cluster")
async def test_services_collect_garbage_rarely_under_load(env: dict[str, str]) -> None:
    """`triggers gateway` and `triggers worker` tune the garbage collector (start-up objects
    frozen, a young collection per 50,000 allocations): 300 calls, 32 at a time, and their
    commands run with at most one young collection each (CPython's default made 8 in the
    gateway and 15 in the worker)."""
    query = await created_scale_trigger(env)
    async with (
        service_process(env, "worker") as worker,
        service_process(env, "gateway") as gateway,
        aiohttp.ClientSession() as http,
    ):
        metrics = {"gateway": f"{gateway.url}/metrics", "worker": f"{worker.url}/metrics"}
        before = {name: await _young_collections(http, url) for name, url in metrics.items()}
        calls = asyncio.Semaphore(32)

        async def call() -> int:
            url = f"{gateway.url}/hook/trigger?{query}&type=scale_out&step=1"
            async with calls, http.post(url) as response:
                return response.status

        assert set(await asyncio.gather(*(call() for _ in range(300)))) == {202}

        async def all_applied() -> bool | None:
            async with http.get(metrics["worker"]) as response:
                samples = metric_samples(await response.text())
            done = sum(v for (n, _), v in samples.items() if n == "triggers_worker_results_total")
            return True if done >= 300 else None

        await eventually(all_applied, what="300 results", within=60)
        after = {name: await _young_collections(http, url) for name, url in metrics.items()}
    collections = {name: after[name] - before[name] for name in metrics}
    assert max(collections.values()) <= 1, collections
