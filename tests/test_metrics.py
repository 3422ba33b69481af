"""The gateway's /metrics: cheap under a flood, on its own listener, each service's own
families, outcomes labelled right, and one scrape for all of `--processes N`."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from shared.broker import AmqpBus
from shared.jobs import JobStore
from shared.metrics import serve_metrics
from shared.policy import PolicyChanges
from shared.settings import Settings
from shared.store import TriggerStore
from shared.triggers import new_secret, trigger_call_url
from tests.support.cli import triggers_cli
from tests.support.gateways import Gateway, Samples, metric_samples
from tests.support.processes import free_port


async def _scrape(http: aiohttp.ClientSession, url: str) -> tuple[Samples, str]:
    async with http.get(url) as response:
        assert response.status == 200
        text = await response.text()
    return metric_samples(text), text


def _calls(samples: Samples, action: str, outcome: str) -> float:
    key = ("triggers_gateway_calls_total", frozenset({("action", action), ("outcome", outcome)}))
    return samples.get(key, 0.0)


def _counting(monkeypatch: pytest.MonkeyPatch, obj: object, name: str) -> list[int]:
    """Count the calls of `obj.name` (still made), in a list of one number."""
    real: Callable[[], Awaitable[Any]] = getattr(obj, name)
    count = [0]

    async def counted() -> Any:
        count[0] += 1
        return await real()

    monkeypatch.setattr(obj, name, counted)
    return count


@pytest.fixture
async def served(
    settings: Settings, store: TriggerStore, bus: AmqpBus, jobs: JobStore
) -> AsyncIterator[Callable[[Settings], Awaitable[str]]]:
    """Start a gateway app with given settings (the test's store, bus and history); its URL."""
    servers: list[TestServer] = []

    async def serve(with_settings: Settings) -> str:
        server = TestServer(
            create_app(with_settings, store=store, bus=bus, jobs=jobs), host="127.0.0.1"
        )
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield serve
    for server in servers:
        await server.close()


async def test_a_flood_of_scrapes_reads_the_store_and_the_broker_once(
    settings: Settings,
    bus: AmqpBus,
    jobs: JobStore,
    served: Callable[[Settings], Awaitable[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """300 scrapes (200 of them at once) within the cache TTL cost one job count and one
    round of queue declares, and every scrape still shows the gauges."""
    counts = _counting(monkeypatch, jobs, "counts")
    depths = _counting(monkeypatch, bus, "queue_depths")
    url = await served(settings.with_(metrics_cache_ttl=600.0)) + "/metrics"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        texts = [
            text for _, text in await asyncio.gather(*(_scrape(http, url) for _ in range(200)))
        ]
        for _ in range(100):
            texts.append((await _scrape(http, url))[1])
    assert (counts[0], depths[0]) == (1, 1)
    for text in texts:
        assert 'triggers_jobs{status="succeeded"}' in text
        assert 'triggers_queue_messages{queue="triggers.commands.redeploy"}' in text


async def test_gauges_are_read_again_once_the_ttl_has_passed(
    settings: Settings,
    jobs: JobStore,
    served: Callable[[Settings], Awaitable[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a TTL of 0 each scrape reads the job counts afresh (the cache is what saves them)."""
    counts = _counting(monkeypatch, jobs, "counts")
    url = await served(settings.with_(metrics_cache_ttl=0.0)) + "/metrics"
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            await _scrape(http, url)
    assert counts[0] == 3


async def test_metrics_on_their_own_listener_and_not_on_the_public_port(
    settings: Settings, store: TriggerStore, served: Callable[[Settings], Awaitable[str]]
) -> None:
    """With a metrics port, /metrics answers there (naming no versions) and 404 on the
    public port; calls on the public port are counted there."""
    port = free_port()
    base = await served(settings.with_(metrics_port=port, metrics_host="127.0.0.1"))
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics") as response:
            assert response.status == 404
            assert (await response.json())["error"] == "not_found"
        before, _ = await _scrape(http, f"http://127.0.0.1:{port}/metrics")
        async with http.get(trigger_call_url(base, trigger, secret)) as response:
            assert response.status == 202
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.headers["Server"] == "container-triggers"
            after = metric_samples(await response.text())
    assert _calls(after, "redeploy", "accepted") - _calls(before, "redeploy", "accepted") == 1


async def test_each_service_exports_only_its_own_families(gateway: Gateway) -> None:
    """The gateway's /metrics has no worker or recorder family, a worker's none of the
    gateway's or the recorder's (all three live in this one test process)."""
    runner = await serve_metrics("127.0.0.1", 0, "worker")
    try:
        host, port = runner.addresses[0][:2]
        _, worker_text = await _scrape(gateway.http, f"http://{host}:{port}/metrics")
    finally:
        await runner.cleanup()
    _, gateway_text = await _scrape(gateway.http, f"{gateway.url}/metrics")
    assert "triggers_gateway_calls" in gateway_text
    assert "triggers_worker_" not in gateway_text
    assert "triggers_recorder_" not in gateway_text
    assert "triggers_worker_results" in worker_text
    assert "triggers_publish_seconds" in worker_text
    assert "triggers_gateway_" not in worker_text
    assert "triggers_recorder_" not in worker_text


async def test_outcomes_say_what_happened_and_carry_the_authenticated_action(
    gateway: Gateway, store: TriggerStore
) -> None:
    """405 is method_not_allowed; refused and ignored calls of an authenticated trigger are
    counted under its action; an unauthenticated call under `unknown`."""
    scale, scale_secret = await store.create(
        cluster="demo", app="shop", action="scale", service="web"
    )
    redeploy, redeploy_secret = await store.create(cluster="demo", app="shop", action="redeploy")
    await store.update(redeploy.id, PolicyChanges(cooldown=60, allowed_methods=["POST"]))
    url = f"{gateway.url}/metrics"
    before, _ = await _scrape(gateway.http, url)
    calls = [
        ("PUT", gateway.call_url(redeploy, redeploy_secret), 405),
        ("GET", gateway.call_url(redeploy, redeploy_secret), 405),  # the trigger's policy
        ("POST", gateway.call_url(redeploy, redeploy_secret), 202),
        ("POST", gateway.call_url(redeploy, redeploy_secret), 200),  # within the cooldown
        ("GET", gateway.call_url(scale, scale_secret) + "&type=sideways&step=1", 400),
        ("GET", gateway.call_url(scale, new_secret()), 403),
    ]
    for method, call, expected in calls:
        async with gateway.http.request(method, call) as response:
            assert response.status == expected, await response.text()
    after, _ = await _scrape(gateway.http, url)

    def delta(action: str, outcome: str) -> float:
        return _calls(after, action, outcome) - _calls(before, action, outcome)

    assert delta("unknown", "method_not_allowed") == 1
    assert delta("redeploy", "method_not_allowed") == 1
    assert delta("redeploy", "accepted") == 1
    assert delta("redeploy", "ignored") == 1
    assert delta("scale", "bad_request") == 1
    assert delta("unknown", "forbidden") == 1
    assert delta("unknown", "bad_request") == 0


@pytest.mark.slow
async def test_one_scrape_shows_every_gateway_process(
    env: dict[str, str], store: TriggerStore
) -> None:
    """`triggers gateway --processes 2 --metrics-port P`: every scrape counts the calls of
    both processes, and the per-process gauge is labelled with each one's pid."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    port, metrics_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        *triggers_cli(),
        "gateway",
        "--port",
        str(port),
        "--processes",
        "2",
        "--metrics-port",
        str(metrics_port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    calls = 20
    try:
        async with asyncio.timeout(60):
            while True:
                try:
                    async with (
                        aiohttp.ClientSession() as http,
                        http.get(f"{base}/readyz") as ready,
                        http.get(metrics) as scraped,
                    ):
                        if ready.status == 200 and scraped.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            # Both processes must be up (each says so through its own gauge sample).
            while True:
                async with aiohttp.ClientSession() as http:
                    samples, _ = await _scrape(http, metrics)
                pids = {
                    dict(labels)["pid"]
                    for name, labels in samples
                    if name == "triggers_gateway_waiting_requests"
                }
                if len(pids) == 2:
                    break
                await asyncio.sleep(0.1)
            for _ in range(calls):
                # A new connection each time, so the kernel spreads them over the processes.
                # The process that answered /readyz may not be the one still connecting to
                # the broker: a 503 is retried, as a caller would, and only 202s are counted.
                while True:
                    async with (
                        aiohttp.ClientSession() as fresh,
                        fresh.get(trigger_call_url(base, trigger, secret)) as response,
                    ):
                        if response.status == 202:
                            break
                        assert response.status == 503, await response.text()
                    await asyncio.sleep(0.1)
            totals = []
            for _ in range(6):  # new connections: answered by either process
                async with aiohttp.ClientSession() as fresh:
                    samples, text = await _scrape(fresh, metrics)
                totals.append(_calls(samples, "redeploy", "accepted"))
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert totals == [calls] * 6
    assert "triggers_worker_" not in text
