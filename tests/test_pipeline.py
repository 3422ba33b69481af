"""End to end on the real RabbitMQ: HTTP -> broker -> worker -> local cluster -> result."""

from __future__ import annotations

import asyncio
import signal
import socket

import aiohttp
import pytest

from shared.jobs import JobStore
from shared.messages import CommandEnvelope, Redeploy, ResultEvent, Source, Target, new_job_id
from shared.store import SqliteTriggerStore
from shared.triggers import trigger_call_url
from tests.support.cli import triggers_cli
from tests.support.gateways import Gateway
from tests.support.workers import Results
from workers.handlers import apply_command
from workers.orchestrators.local import LocalOrchestrator
from workers.worker import Worker


def event_target(event: ResultEvent) -> Target:
    """The target a result event names."""
    return Target(cluster=event.cluster, app=event.app, service=event.service)


async def test_get_on_redeploy_trigger_restarts_every_service(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """A plain GET redeploys the app: each service's revision goes up by one."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    async with gateway.http.get(gateway.call_url(trigger, secret)) as response:
        body = await response.json()
        assert response.status == 202, body
    assert body["status"] == "accepted"
    assert body["action"] == "redeploy"

    (event,) = await results.wait_for(body["job_id"])
    assert event.status == "succeeded"
    assert event.trigger_id == trigger.id
    assert (event.cluster, event.app, event.service) == ("demo", "shop", None)
    assert {n: s.revision for n, s in event.before.items()} == {"api": 1, "web": 1}
    assert {n: s.revision for n, s in event.after.items()} == {"api": 2, "web": 2}
    assert event.error is None
    assert event.duplicate is False
    assert event.correlation_id == body["correlation_id"]
    state = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]
    assert state["web"] == {"replicas": 2, "image": "nginx:1.27", "revision": 2}
    assert state["api"]["revision"] == 2


async def test_redeploy_trigger_bound_to_a_service_restarts_only_it(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
    jobs: JobStore,
) -> None:
    """`--service` on a redeploy trigger: only that service's revision moves, with an image
    push only it is re-imaged, and the answer, the result and the history name it."""
    cluster.cluster.set_service(
        "demo", "shop", "jobs", replicas=1, image="ghcr.io/acme/shop-api:1.4.2"
    )
    trigger, secret = await store.create(
        cluster="demo", app="shop", action="redeploy", service="api"
    )
    async with gateway.http.get(gateway.call_url(trigger, secret)) as response:
        body = await response.json()
        assert response.status == 202, body
    assert body["service"] == "api"
    (event,) = await results.wait_for(body["job_id"])
    assert (event.status, event.service) == ("succeeded", "api")
    assert {n: s.revision for n, s in event.after.items()} == {"api": 2}
    services = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]
    assert {n: s["revision"] for n, s in services.items()} == {"api": 2, "jobs": 1, "web": 1}

    # An image update of that service leaves the other service running the repository alone.
    image = "ghcr.io/acme/shop-api:1.5.0"
    change = await cluster.redeploy("job-push", event_target(event), image=image)
    assert list(change.after) == ["api"]
    services = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]
    assert (services["api"]["image"], services["api"]["revision"]) == (image, 3)
    assert (services["jobs"]["image"], services["jobs"]["revision"]) == (
        "ghcr.io/acme/shop-api:1.4.2",
        1,
    )
    for _ in range(100):
        job = await jobs.get(body["job_id"])
        if job is not None:
            break
        await asyncio.sleep(0.05)
    assert job is not None
    assert job.service == "api"


@pytest.mark.unit
async def test_image_update_bound_to_a_service_skips_a_push_of_another_repository(
    cluster: LocalOrchestrator,
) -> None:
    """An image-update trigger bound to `web` skips a push of the api's repository (which
    the app runs, but not that service), and rolls a push of its own onto `web` only."""
    web = Target(cluster="demo", app="shop", service="web")

    def push(image: str) -> CommandEnvelope:
        return CommandEnvelope(
            job_id=new_job_id(),
            trigger_id="t",
            target=web,
            command=Redeploy(image=image, only_matching=True),
            source=Source(kind="http"),
        )

    skipped = await apply_command(push("ghcr.io/acme/shop-api:1.5.0"), cluster)
    assert (skipped.status, list(skipped.after)) == ("skipped", ["web"])
    assert skipped.detail is not None
    assert skipped.detail.startswith("web of shop does not run ghcr.io/acme/shop-api")
    rolled = await apply_command(push("nginx:1.28"), cluster)
    assert (rolled.status, list(rolled.after)) == ("succeeded", ["web"])
    services = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]
    assert (services["web"]["image"], services["web"]["revision"]) == ("nginx:1.28", 2)
    assert (services["api"]["image"], services["api"]["revision"]) == (
        "ghcr.io/acme/shop-api:1.4.2",
        1,
    )


async def test_post_scale_out_by_five(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """POST with type=scale_out&step=5 adds five replicas to the trigger's service only."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="scale", service="web")
    url = gateway.call_url(trigger, secret) + "&type=scale_out&step=5"
    async with gateway.http.post(url, headers={"X-Request-ID": "ci-build-4711"}) as response:
        body = await response.json()
        assert response.status == 202, body
    assert (body["type"], body["step"], body["service"]) == ("scale_out", 5, "web")
    assert body["correlation_id"] == "ci-build-4711"

    (event,) = await results.wait_for(body["job_id"])
    assert event.status == "succeeded"
    assert event.action == "scale"
    assert event.before["web"].replicas == 2
    assert event.after["web"].replicas == 7
    assert (event.requested_step, event.applied_step, event.clamped) == (5, 5, False)
    assert event.correlation_id == "ci-build-4711"
    assert event.source.method == "POST"
    services = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]
    assert services["web"]["replicas"] == 7
    assert services["api"]["replicas"] == 1


async def test_scale_in_never_goes_below_zero_and_says_so(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """scale_in by 5 from 2 stops at 0 and reports the clamp; again at 0 it is skipped."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="scale", service="web")
    url = gateway.call_url(trigger, secret) + "&type=scale_in&step=5"
    async with gateway.http.get(url) as response:
        first = await response.json()
    (event,) = await results.wait_for(first["job_id"])
    assert (event.status, event.clamped, event.applied_step) == ("succeeded", True, 2)
    assert event.after["web"].replicas == 0
    assert event.detail is not None
    assert "clamped" in event.detail

    async with gateway.http.get(url) as response:
        second = await response.json()
    (again,) = await results.wait_for(second["job_id"])
    assert again.status == "skipped"
    assert again.after["web"].replicas == 0


async def test_missing_application_ends_in_a_failed_result_and_a_dead_letter(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """A trigger for an app the cluster lacks yields a failed result a human can act on."""
    trigger, secret = await store.create(cluster="demo", app="gone", action="redeploy")
    async with gateway.http.post(gateway.call_url(trigger, secret)) as response:
        body = await response.json()
        assert response.status == 202
    (event,) = await results.wait_for(body["job_id"])
    assert event.status == "failed"
    assert event.error is not None
    assert "'gone' not found" in event.error
    assert "triggers local set-app" in event.error


async def test_gateway_processes_share_one_port_and_stop_on_sigterm(
    env: dict[str, str], store: SqliteTriggerStore
) -> None:
    """`triggers gateway --processes 2` answers 202 on one port and exits 0 on SIGTERM."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        *triggers_cli(),
        "gateway",
        "--port",
        str(port),
        "--processes",
        "2",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    logged: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            # Each process connects to the broker on its own and says so in the log.
            assert process.stderr is not None
            while sum(b'"bus.connected"' in line for line in logged) < 2:
                line = await process.stderr.readline()
                assert line, b"".join(logged).decode()[-2000:]
                logged.append(line)
            while True:  # and the port is bound (it may come a moment after the broker)
                try:
                    async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            statuses: list[tuple[int, str]] = []
            for _ in range(6):
                # A new connection each time, so the kernel spreads them over the processes.
                async with (
                    aiohttp.ClientSession() as fresh,
                    fresh.get(trigger_call_url(base, trigger, secret)) as response,
                ):
                    statuses.append((response.status, await response.text()))
        assert [status for status, _ in statuses] == [202] * 6, statuses
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, rest = await process.communicate()
    stderr = b"".join(logged) + rest
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert stderr.count(b'"path":"/hook/trigger"') == 6  # one summary line per call
