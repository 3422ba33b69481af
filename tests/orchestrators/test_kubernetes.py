"""The Kubernetes adapter, with lightkube, against a wire-level fake API server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.errors import ConflictError, NotFoundError, PermanentError, RetryableError
from shared.messages import Target
from tests.orchestrators.fake_kube import FakeKube, running_fake_kube, write_kubeconfig
from tests.support.events import Reported
from workers.orchestrators.kubernetes import RESTARTED_AT, KubernetesOrchestrator
from workers.orchestrators.ledger import LEDGER_KEY, read_ledger

pytestmark = pytest.mark.unit

PART_OF = {"app.kubernetes.io/part-of": "shop"}
SHOP = Target(cluster="prod", app="shop")
WEB = Target(cluster="prod", app="shop", service="web")
ISSUED = datetime(2026, 11, 27, 15, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
async def fake_kube(tmp_path: Path) -> AsyncIterator[tuple[FakeKube, Path]]:
    """A fake API server with the shop app, and a kubeconfig with contexts prod and staging."""
    async with running_fake_kube() as (fake, url):
        fake.add("web", labels=PART_OF, replicas=2, images=["nginx:1.27"])
        fake.add(
            "api", labels=PART_OF, replicas=1, images=["ghcr.io/acme/shop-api:1.4", "envoy:1.30"]
        )
        fake.add("db", kind="statefulsets", labels=PART_OF, replicas=1, images=["postgres:17"])
        fake.add("blog", labels={"app.kubernetes.io/part-of": "blog"}, images=["nginx:1.27"])
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig", url, {"prod": None, "staging": "shop-staging"}
        )
        yield fake, kubeconfig


@pytest.fixture
async def k8s(fake_kube: tuple[FakeKube, Path]) -> AsyncIterator[KubernetesOrchestrator]:
    """The adapter configured through the kubeconfig file."""
    orchestrator = KubernetesOrchestrator(kubeconfig=str(fake_kube[1]), timeout=2.0)
    yield orchestrator
    await orchestrator.close()


def patches(fake: FakeKube) -> list[str]:
    """Paths of the PATCH requests the fake received."""
    return [path for method, path in fake.requests if method == "PATCH"]


async def test_redeploy_stamps_every_workload_of_the_app(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """Redeploy patches restartedAt (the command's time) on each Deployment and StatefulSet of the app, and nothing else."""
    fake, _ = fake_kube
    change = await k8s.redeploy("job-1", SHOP, issued_at=ISSUED)
    assert change.status == "succeeded"
    assert change.duplicate is False
    assert sorted(change.after) == ["api", "db", "web"]
    for name, kind in [("web", "deployments"), ("api", "deployments"), ("db", "statefulsets")]:
        obj = fake.get(name, kind=kind)
        annotations = obj["spec"]["template"]["metadata"]["annotations"]
        assert annotations[RESTARTED_AT] == ISSUED.isoformat()
        assert obj["metadata"]["generation"] == 2
        assert change.after[name].revision == change.before[name].revision + 1
        assert "job-1" in read_ledger(obj["metadata"]["annotations"])
    assert "annotations" not in fake.get("blog")["spec"]["template"]["metadata"]


async def test_redelivered_redeploy_changes_nothing(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """The same job again writes nothing and reports the first delivery's change as a duplicate."""
    fake, _ = fake_kube
    first = await k8s.redeploy("job-1", SHOP, issued_at=ISSUED)
    versions = {n: fake.get(n)["metadata"]["resourceVersion"] for n in ("web", "api")}
    writes = len(patches(fake))
    again = await k8s.redeploy("job-1", SHOP, issued_at=ISSUED)
    assert again.duplicate is True
    assert (again.before, again.after) == (first.before, first.after)
    recorded = await k8s.recorded("job-1", SHOP)
    assert recorded is not None
    assert recorded.after == first.after
    assert await k8s.recorded("job-never", SHOP) is None
    assert len(patches(fake)) == writes
    assert {n: fake.get(n)["metadata"]["resourceVersion"] for n in ("web", "api")} == versions


async def test_redeploy_with_image_sets_only_that_container(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """A pushed image is set on the containers running its repository; sidecars and other services keep theirs."""
    fake, _ = fake_kube
    change = await k8s.redeploy("job-img", SHOP, image="ghcr.io/acme/shop-api:1.5")
    assert list(change.after) == ["api"]
    assert change.image == "ghcr.io/acme/shop-api:1.5"
    again = await k8s.redeploy("job-img", SHOP, image="ghcr.io/acme/shop-api:1.5")
    assert (again.duplicate, again.image, again.after) == (True, change.image, change.after)
    assert change.after["api"].image == "ghcr.io/acme/shop-api:1.5"
    containers = fake.get("api")["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == ["ghcr.io/acme/shop-api:1.5", "envoy:1.30"]
    assert fake.get("web")["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"
    assert fake.get("web")["metadata"]["generation"] == 1


async def test_redeploy_bound_to_a_service_restarts_and_re_images_only_it(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """A service-bound redeploy stamps (and with an image, re-images) that workload only,
    even when another workload of the app runs the same repository."""
    fake, _ = fake_kube
    fake.add("worker", labels=PART_OF, replicas=1, images=["ghcr.io/acme/shop-api:1.4"])
    api = Target(cluster="prod", app="shop", service="api")
    change = await k8s.redeploy("job-s", api, issued_at=ISSUED)
    assert (list(change.before), list(change.after)) == (["api"], ["api"])
    pushed = await k8s.redeploy("job-si", api, image="ghcr.io/acme/shop-api:1.5")
    assert list(pushed.after) == ["api"]
    assert pushed.after["api"].image == "ghcr.io/acme/shop-api:1.5"
    assert fake.get("api")["metadata"]["generation"] == 3
    for untouched in ("web", "worker"):
        assert fake.get(untouched)["metadata"]["generation"] == 1
    worker = fake.get("worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["image"] == "ghcr.io/acme/shop-api:1.4"
    recorded = await k8s.recorded("job-si", api)
    assert recorded is not None
    assert list(recorded.after) == ["api"]
    other = await k8s.redeploy("job-so", WEB, image="ghcr.io/acme/shop-api:1.6")
    assert list(other.after) == ["web"]
    assert other.after["web"].image == "nginx:1.27"
    assert (
        other.detail
        == "web of shop does not run ghcr.io/acme/shop-api; restarted it, image unchanged"
    )
    with pytest.raises(NotFoundError, match="'gone'"):
        await k8s.redeploy("job-sg", Target(cluster="prod", app="shop", service="gone"))


async def test_paused_deployment_is_refused_without_any_write(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """A paused Deployment fails the redeploy permanently, says how to resume, and nothing is patched."""
    fake, _ = fake_kube
    fake.get("web")["spec"]["paused"] = True
    with pytest.raises(PermanentError, match=r"paused.*kubectl rollout resume deployment/web"):
        await k8s.redeploy("job-p", SHOP)
    assert patches(fake) == []


async def test_application_falls_back_to_the_name_label(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """Workloads labelled only app.kubernetes.io/name=<app> form the application when no part-of label matches."""
    fake, _ = fake_kube
    fake.add("wiki", labels={"app.kubernetes.io/name": "wiki"}, replicas=3)
    state = await k8s.state(Target(cluster="prod", app="wiki"))
    assert {n: s.replicas for n, s in state.items()} == {"wiki": 3}


async def test_namespace_from_target_then_context_then_default(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """The trigger's namespace wins, then the context's namespace, then `default`."""
    fake, _ = fake_kube
    fake.add("web", namespace="shop-staging", labels=PART_OF, replicas=5)
    fake.add("web", namespace="team-a", labels=PART_OF, replicas=7)
    assert (await k8s.state(WEB))["web"].replicas == 2
    staging = Target(cluster="staging", app="shop", service="web")
    assert (await k8s.state(staging))["web"].replicas == 5
    team = Target(cluster="staging", app="shop", service="web", namespace="team-a")
    assert (await k8s.state(team))["web"].replicas == 7


async def test_scale_goes_through_the_scale_subresource(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """Scaling out by 3 writes /scale with a resourceVersion precondition and reports 2 -> 5."""
    fake, _ = fake_kube
    change = await k8s.scale("job-s", WEB, delta=3)
    assert (change.status, change.applied_step, change.clamped) == ("succeeded", 3, False)
    assert (change.before["web"].replicas, change.after["web"].replicas) == (2, 5)
    assert fake.get("web")["spec"]["replicas"] == 5
    assert patches(fake)[-1] == "/apis/apps/v1/namespaces/default/deployments/web/scale"
    assert change.after["web"].revision == fake.get("web")["metadata"]["generation"]


async def test_scale_result_says_whether_the_new_replicas_are_ready(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """A scale result says the replicas are ready, or that they were requested and how many run."""
    fake, _ = fake_kube
    ready = await k8s.scale("job-ready", WEB, delta=1)
    assert ready.detail is not None
    assert ready.detail.endswith("3 replicas ready")
    fake.ready_lag = 2
    pending = await k8s.scale("job-pending", WEB, delta=2)
    assert pending.status == "succeeded"
    assert pending.detail is not None
    assert pending.detail.endswith("5 replicas requested, 3 ready so far")


async def test_scale_a_statefulset(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """A service may be a StatefulSet; it is scaled through its own /scale."""
    fake, _ = fake_kube
    change = await k8s.scale("job-db", Target(cluster="prod", app="shop", service="db"), delta=2)
    assert change.after["db"].replicas == 3
    assert fake.get("db", kind="statefulsets")["spec"]["replicas"] == 3


async def test_scale_in_clamps_at_zero_then_skips(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """scale_in by 5 from 2 stops at 0 and says so; again at 0 it is skipped without touching replicas."""
    fake, _ = fake_kube
    change = await k8s.scale("job-in", WEB, delta=-5)
    assert (change.status, change.clamped, change.applied_step) == ("succeeded", True, 2)
    assert fake.get("web")["spec"]["replicas"] == 0
    again = await k8s.scale("job-in-2", WEB, delta=-1)
    assert again.status == "skipped"
    assert fake.get("web")["spec"]["replicas"] == 0


async def test_redelivered_scale_does_not_add_the_step_again(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """A redelivered scale job reports its recorded change as a duplicate and leaves replicas alone."""
    fake, _ = fake_kube
    first = await k8s.scale("job-r", WEB, delta=2)
    again = await k8s.scale("job-r", WEB, delta=2)
    assert again.duplicate is True
    assert again.after == first.after
    assert fake.get("web")["spec"]["replicas"] == 4


async def test_interrupted_scale_is_finished_with_the_same_absolute_target(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """When /scale fails after the intent was recorded, the redelivery sets the recorded target, not current + step."""
    fake, _ = fake_kube
    fake.fail(500, method="PATCH", suffix="/scale")
    with pytest.raises(RetryableError, match="500"):
        await k8s.scale("job-x", WEB, delta=3)
    assert fake.get("web")["spec"]["replicas"] == 2
    assert read_ledger(fake.get("web")["metadata"]["annotations"])["job-x"].after.replicas == 5
    assert await k8s.recorded("job-x", WEB) is None  # recorded, but not applied yet

    redelivered = await k8s.scale("job-x", WEB, delta=3)
    assert redelivered.duplicate is False
    assert fake.get("web")["spec"]["replicas"] == 5
    applied = await k8s.recorded("job-x", WEB)
    assert applied is not None
    assert applied.after["web"].replicas == 5
    assert (await k8s.scale("job-x", WEB, delta=3)).duplicate is True
    assert fake.get("web")["spec"]["replicas"] == 5


async def test_a_pending_intent_is_finished_before_the_next_job(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """Another job arriving while one is half-applied completes it first, so neither step is lost."""
    fake, _ = fake_kube
    fake.fail(503, method="PATCH", suffix="/scale")
    with pytest.raises(RetryableError):
        await k8s.scale("job-a", WEB, delta=3)
    change = await k8s.scale("job-b", WEB, delta=1)
    assert (change.before["web"].replicas, change.after["web"].replicas) == (5, 6)
    assert fake.get("web")["spec"]["replicas"] == 6
    assert (await k8s.scale("job-a", WEB, delta=3)).duplicate is True
    assert fake.get("web")["spec"]["replicas"] == 6


async def test_two_workers_scaling_concurrently_lose_no_step(
    fake_kube: tuple[FakeKube, Path],
) -> None:
    """Two adapters (two workers) scaling one Deployment at once meet 409s, retry, and apply every step once."""
    fake, kubeconfig = fake_kube
    fake.latency = 0.002
    workers = [
        KubernetesOrchestrator(kubeconfig=str(kubeconfig), timeout=5.0, conflict_retries=30)
        for _ in range(2)
    ]
    try:
        jobs = [workers[i % 2].scale(f"job-{i}", WEB, delta=1) for i in range(6)]
        changes = await asyncio.gather(*jobs)
        # Redeliveries of all six, again from both workers, change nothing.
        again = await asyncio.gather(
            *[workers[(i + 1) % 2].scale(f"job-{i}", WEB, delta=1) for i in range(6)]
        )
    finally:
        for worker in workers:
            await worker.close()
    assert fake.get("web")["spec"]["replicas"] == 2 + 6
    assert fake.conflicts > 0
    assert sorted(c.after["web"].replicas for c in changes) == [3, 4, 5, 6, 7, 8]
    assert all(c.duplicate for c in again)


async def test_conflicts_beyond_the_bound_are_retryable(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """When every write meets a 409, the adapter gives up after its bound with a retryable ConflictError."""
    fake, _ = fake_kube
    fake.fail(409, method="PATCH", times=50)
    with pytest.raises(ConflictError, match="kept changing"):
        await k8s.scale("job-c", WEB, delta=1)
    assert fake.get("web")["spec"]["replicas"] == 2


@pytest.mark.parametrize(
    ("fault", "error", "words"),
    [
        (403, PermanentError, "deploy/k8s/rbac.yaml"),
        (404, NotFoundError, "not found"),
        (500, RetryableError, "answered 500"),
        (503, RetryableError, "will retry"),
        ("proxy-502", RetryableError, "answered 502: <html>502 Bad Gateway"),
        ("hang", RetryableError, "did not answer in time"),
    ],
)
async def test_api_errors_map_to_retryable_or_permanent(
    fake_kube: tuple[FakeKube, Path],
    fault: int | str,
    error: type[Exception],
    words: str,
) -> None:
    """Each API failure becomes the error kind that tells the worker whether to retry, with a message to act on."""
    fake, kubeconfig = fake_kube
    orchestrator = KubernetesOrchestrator(kubeconfig=str(kubeconfig), timeout=0.3)
    fake.fail(fault)
    try:
        with pytest.raises(error, match=words) as caught:
            await orchestrator.scale("job-e", WEB, delta=1)
        fake.fail(fault)
        # After giving up, the worker asks whether the job was applied: unknown is None.
        assert await orchestrator.recorded("job-e", WEB) is None
    finally:
        fake.release()
        await orchestrator.close()
    assert "prod" in str(caught.value)
    assert fake.get("web")["spec"]["replicas"] == 2


async def test_missing_application_and_service_are_permanent(
    k8s: KubernetesOrchestrator,
) -> None:
    """An app with no labelled workloads, or a service of another app, fails permanently and says what to label."""
    with pytest.raises(NotFoundError, match="kubectl label deployment NAME"):
        await k8s.redeploy("job-n", Target(cluster="prod", app="gone"))
    with pytest.raises(NotFoundError, match="not found"):
        await k8s.scale("job-n2", Target(cluster="prod", app="shop", service="gone"), delta=1)
    with pytest.raises(NotFoundError, match="not part of application 'shop'"):
        await k8s.scale("job-n3", Target(cluster="prod", app="shop", service="blog"), delta=1)


async def test_wrong_credentials_are_permanent(
    fake_kube: tuple[FakeKube, Path], tmp_path: Path
) -> None:
    """A token the API server rejects (401) fails permanently instead of retrying forever."""
    _, kubeconfig = fake_kube
    server = kubeconfig.read_text().split('"server": "')[1].split('"')[0]
    bad = write_kubeconfig(tmp_path / "bad", server, {"prod": None}, token="expired")
    orchestrator = KubernetesOrchestrator(kubeconfig=str(bad), timeout=2.0)
    try:
        with pytest.raises(PermanentError, match="refused access"):
            await orchestrator.state(SHOP)
    finally:
        await orchestrator.close()


async def test_unreachable_api_is_retryable(tmp_path: Path) -> None:
    """A context whose server does not answer is a retryable failure naming the cluster."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}", {"prod": None})
    orchestrator = KubernetesOrchestrator(kubeconfig=str(kubeconfig), timeout=2.0)
    try:
        with pytest.raises(
            RetryableError, match="cannot reach the Kubernetes API of cluster 'prod'"
        ):
            await orchestrator.state(SHOP)
    finally:
        await orchestrator.close()


async def test_unknown_context_is_permanent_and_lists_the_known_ones(
    k8s: KubernetesOrchestrator,
) -> None:
    """A trigger whose cluster names no kubeconfig context fails permanently, listing the contexts there are."""
    with pytest.raises(PermanentError, match=r"no kubeconfig context named 'qa'.*prod, staging"):
        await k8s.state(Target(cluster="qa", app="shop"))


async def test_ledger_keeps_a_bounded_history(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """The ledger annotation keeps the last jobs only, so it never grows without bound."""
    fake, _ = fake_kube
    for i in range(25):
        await k8s.scale(f"job-{i}", WEB, delta=1)
    ledger = read_ledger(fake.get("web")["metadata"]["annotations"])
    assert len(ledger) == 20
    assert "job-24" in ledger
    assert "job-0" not in ledger
    assert LEDGER_KEY.startswith("triggers.container-triggers.io/")


async def test_redeploy_past_its_progress_deadline_fails_with_the_reason(
    fake_kube: tuple[FakeKube, Path], k8s: KubernetesOrchestrator
) -> None:
    """A Deployment whose new pods never become available (ProgressDeadlineExceeded) makes the redeploy failed, with the controller's message."""
    fake, _ = fake_kube
    fake.rollout = "stuck"
    change = await k8s.redeploy("job-stuck", Target(cluster="prod", app="blog"))
    assert change.status == "failed"
    assert change.error is not None
    assert "deployment blog: exceeded its progress deadline" in change.error
    assert "has timed out progressing" in change.error
    assert "0 of 1 updated" in change.error


async def test_redeploy_still_rolling_out_after_the_timeout_fails(
    fake_kube: tuple[FakeKube, Path],
) -> None:
    """A rollout that is still going when the rollout timeout ends is failed with its progress; a completed one succeeds."""
    fake, kubeconfig = fake_kube
    k8s = KubernetesOrchestrator(
        kubeconfig=str(kubeconfig), rollout_timeout=0.3, poll_interval=0.05
    )
    try:
        fake.rollout = "progressing"
        slow = await k8s.redeploy("job-slow", SHOP)
        fake.rollout = "complete"
        done = await k8s.redeploy("job-done", SHOP)
    finally:
        await k8s.close()
    assert slow.status == "failed"
    assert slow.error is not None
    assert "deployment web: rollout not finished after 0.3 s (1 of 2 updated)" in slow.error
    assert "statefulset db: rollout not finished" in slow.error
    assert done.status == "succeeded"


async def test_redeploy_reports_the_updated_replicas_as_the_rollout_goes(
    fake_kube: tuple[FakeKube, Path],
) -> None:
    """A one-at-a-time rollout of 3 replicas is reported 0/3, 1/3, 2/3, then 3/3 (updatedReplicas of spec.replicas), and then succeeds."""
    fake, kubeconfig = fake_kube
    fake.add("front", labels={"app.kubernetes.io/part-of": "site"}, replicas=3)
    fake.rollout = "rolling"
    report = Reported()
    k8s = KubernetesOrchestrator(kubeconfig=str(kubeconfig), poll_interval=0.01)
    try:
        change = await k8s.redeploy("job-roll", Target(cluster="prod", app="site"), progress=report)
    finally:
        await k8s.close()
    assert change.status == "succeeded", change.error
    assert report.of("front") == [(0, 3), (1, 3), (2, 3), (3, 3)]
