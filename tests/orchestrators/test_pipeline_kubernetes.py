"""End to end with TRIGGERS_ORCHESTRATOR=kubernetes: HTTP -> RabbitMQ -> worker -> fake API."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from shared.broker import AmqpBus
from shared.messages import Target
from shared.settings import Settings
from shared.store import SqliteTriggerStore
from tests.orchestrators.fake_kube import FakeKube, running_fake_kube, write_kubeconfig
from tests.support.cli import tailing, triggers_cli
from tests.support.events import redeploy_in_steps
from tests.support.gateways import Gateway
from tests.support.messages import scale_command
from tests.support.processes import scale_out_and_crash, start_worker
from tests.support.workers import Results
from workers.orchestrators import open_orchestrator
from workers.orchestrators.kubernetes import RESTARTED_AT
from workers.worker import Worker

PART_OF = {"app.kubernetes.io/part-of": "shop"}


@pytest.fixture
async def kube_env(
    tmp_path: Path, env: dict[str, str]
) -> AsyncIterator[tuple[FakeKube, dict[str, str]]]:
    """A fake API server and the environment a user would set: orchestrator and KUBECONFIG."""
    async with running_fake_kube() as (fake, url):
        fake.add("web", labels=PART_OF, replicas=2, images=["nginx:1.27"])
        fake.add("api", labels=PART_OF, replicas=1, images=["ghcr.io/acme/shop-api:1.4"])
        fake.add("web", namespace="shop-prod", labels=PART_OF, replicas=3)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url, {"prod": None})
        yield fake, env | {"TRIGGERS_ORCHESTRATOR": "kubernetes", "KUBECONFIG": str(kubeconfig)}


@pytest.fixture
async def kube_worker(
    settings: Settings, kube_env: tuple[FakeKube, dict[str, str]], bus: AmqpBus
) -> AsyncIterator[Worker]:
    """A worker whose adapter is chosen and configured from the environment alone."""
    configured = Settings.from_env(kube_env[1]).with_(
        retry_delays=settings.retry_delays, shutdown_timeout=5.0, orchestrator_timeout=2.0
    )
    orchestrator = open_orchestrator(configured)
    assert orchestrator.name == "kubernetes"
    amqp = AmqpBus(settings.amqp_url, role="test-worker")
    await amqp.start()
    running = Worker(configured, amqp, orchestrator)
    await running.start()
    yield running
    await running.stop()
    await amqp.close()
    await orchestrator.close()


async def test_redeploy_call_restarts_the_deployments(
    gateway: Gateway,
    store: SqliteTriggerStore,
    kube_env: tuple[FakeKube, dict[str, str]],
    kube_worker: Worker,
    results: Results,
) -> None:
    """A redeploy call ends with every workload of the app stamped with the command's time, reported once."""
    fake, _ = kube_env
    trigger, secret = await store.create(cluster="prod", app="shop", action="redeploy")
    async with gateway.http.post(gateway.call_url(trigger, secret)) as response:
        body = await response.json()
        assert response.status == 202, body
    (event,) = await results.wait_for(body["job_id"])
    assert (event.status, event.orchestrator, event.error) == ("succeeded", "kubernetes", None)
    assert sorted(event.after) == ["api", "web"]
    assert event.after["web"].revision == event.before["web"].revision + 1
    assert event.issued_at is not None
    stamp = fake.get("web")["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
    assert stamp == event.issued_at.isoformat()


async def test_scale_trigger_created_with_a_namespace(
    gateway: Gateway,
    store: SqliteTriggerStore,
    kube_env: tuple[FakeKube, dict[str, str]],
    kube_worker: Worker,
    results: Results,
) -> None:
    """`triggers create --namespace` makes calls scale the Deployment in that namespace only."""
    fake, environ = kube_env
    created = await asyncio.to_thread(
        subprocess.run,
        [
            *triggers_cli(),
            "create",
            "--cluster=prod",
            "--app=shop",
            "--action=scale",
            "--service=web",
            "--namespace=shop-prod",
            "--json",
        ],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    made = json.loads(created.stdout)
    assert made["namespace"] == "shop-prod"
    url = made["url"].replace("http://127.0.0.1:8080", gateway.url) + "&type=scale_out&step=2"
    async with gateway.http.post(url) as response:
        body = await response.json()
        assert response.status == 202, body
    (event,) = await results.wait_for(body["job_id"])
    assert event.status == "succeeded", event.error
    assert (event.before["web"].replicas, event.after["web"].replicas) == (3, 5)
    assert fake.get("web", namespace="shop-prod")["spec"]["replicas"] == 5
    assert fake.get("web")["spec"]["replicas"] == 2


async def test_forbidden_ends_in_a_failed_result_saying_what_to_grant(
    gateway: Gateway,
    store: SqliteTriggerStore,
    kube_env: tuple[FakeKube, dict[str, str]],
    kube_worker: Worker,
    results: Results,
) -> None:
    """A 403 from the API is not retried: one failed result whose error names the RBAC to grant."""
    fake, _ = kube_env
    fake.fail(403, times=5)
    trigger, secret = await store.create(cluster="prod", app="shop", action="redeploy")
    async with gateway.http.get(gateway.call_url(trigger, secret)) as response:
        body = await response.json()
    (event,) = await results.wait_for(body["job_id"])
    assert (event.status, event.attempt) == ("failed", 1)
    assert event.error is not None
    assert "get, list and patch on deployments" in event.error


@pytest.mark.slow
async def test_worker_process_killed_after_scaling_leaves_exactly_one_change(
    gateway: Gateway,
    store: SqliteTriggerStore,
    kube_env: tuple[FakeKube, dict[str, str]],
    results: Results,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """`triggers worker` on Kubernetes, SIGKILLed between the change and the ack: the next worker reports the change as a duplicate and adds nothing."""
    fake, environ = kube_env
    trigger, secret = await store.create(cluster="prod", app="shop", action="scale", service="web")
    job_id = await scale_out_and_crash(gateway, trigger, secret, environ, processes, step=4)
    assert fake.get("web")["spec"]["replicas"] == 6
    assert results.for_job(job_id) == []

    survivor = start_worker(environ, processes)
    (event,) = await results.wait_for(job_id, within=30)
    assert (event.status, event.duplicate, event.orchestrator) == ("succeeded", True, "kubernetes")
    assert (event.before["web"].replicas, event.after["web"].replicas) == (2, 6)
    assert fake.get("web")["spec"]["replicas"] == 6
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=30) == 0


async def test_job_redelivered_after_kubectl_replace_is_not_applied_again(
    settings: Settings,
    kube_env: tuple[FakeKube, dict[str, str]],
    bus: AmqpBus,
    results: Results,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """`triggers worker` keeps applied jobs in the store: after kubectl replace dropped the ledger annotation, a redelivered scale job is a duplicate and changes nothing."""
    fake, kube = kube_env
    start_worker(kube, processes)
    envelope = scale_command(2)
    envelope = msgspec.structs.replace(
        envelope, target=Target(cluster="prod", app="shop", service="web")
    )
    await bus.publish_command(envelope)
    (first,) = await results.wait_for(envelope.job_id, within=30)
    assert (first.status, first.after["web"].replicas) == ("succeeded", 4)

    replaced = fake.get("web")  # kubectl replace -f web.yaml: the manifest's annotations
    replaced["metadata"]["annotations"] = {}
    replaced["spec"]["replicas"] = 2
    fake.touch("web")
    await bus.publish_command(envelope)
    _, second = await results.wait_for(envelope.job_id, count=2, within=30)
    assert (second.duplicate, second.after) == (True, first.after)
    assert fake.get("web")["spec"]["replicas"] == 2


async def test_running_notices_carry_the_rollout_progress_before_the_result(
    settings: Settings,
    kube_env: tuple[FakeKube, dict[str, str]],
    kube_worker: Worker,
    bus: AmqpBus,
) -> None:
    """A redeploy of 3 replicas rolled one at a time is `running` with updated/total from the controller, at least once below 3/3, never going back, and then succeeded; `triggers tail` prints those running lines before the result's."""
    fake, environ = kube_env
    fake.add("front", labels={"app.kubernetes.io/part-of": "site"}, replicas=3)
    fake.rollout = "rolling"
    async with tailing({**environ, "COLUMNS": "200"}, "--app", "site", "--count", "1") as tail:
        site = Target(cluster="prod", app="site")
        counts = await redeploy_in_steps(
            bus, settings.amqp_url, site, service="front", total=3, within=60
        )
        async with asyncio.timeout(30):
            out, _ = await tail.communicate()
    assert counts[-1] == (3, 3)
    *running, done = out.decode().splitlines()
    assert running, out.decode()
    assert all("RUNNING" in line and "prod/site" in line for line in running)
    shown = [f"front {u}/{t} updated" for u, t in counts]
    with_counts = [line for line in running if "updated" in line]
    assert [next(s for s in shown if s in line) for line in with_counts] == shown, running
    assert "SUCCEEDED" in done
