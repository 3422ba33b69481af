"""The Swarm adapter, with aiodocker, against a wire-level fake Docker Engine."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from shared.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    PermanentError,
    RetryableError,
)
from shared.messages import Target
from shared.settings import Settings
from tests.orchestrators.fake_docker import FakeDocker
from tests.support.events import Reported
from workers.orchestrators import open_orchestrator
from workers.orchestrators.ledger import read_ledger
from workers.orchestrators.swarm import SwarmOrchestrator, parse_docker_hosts

pytestmark = pytest.mark.unit

SHOP = Target(cluster="prod", app="shop")
WEB = Target(cluster="prod", app="shop", service="web")


@pytest.fixture
async def swarm(fake_docker: tuple[FakeDocker, str]) -> AsyncIterator[SwarmOrchestrator]:
    """The adapter selected and configured from the environment, as a worker does it."""
    settings = Settings.from_env(
        {"TRIGGERS_ORCHESTRATOR": "swarm", "TRIGGERS_DOCKER_HOST": fake_docker[1]}
    )
    orchestrator = open_orchestrator(settings)
    assert isinstance(orchestrator, SwarmOrchestrator)
    yield orchestrator
    await orchestrator.close()


async def test_redeploy_forces_an_update_of_every_service_of_the_stack(
    fake_docker: tuple[FakeDocker, str], swarm: SwarmOrchestrator
) -> None:
    """Redeploy bumps TaskTemplate.ForceUpdate of each service of the stack, and of no other stack."""
    fake, _ = fake_docker
    change = await swarm.redeploy("job-1", SHOP)
    assert sorted(change.after) == ["agent", "api", "web"]
    for name in ("web", "api", "agent"):
        revision = fake.spec(f"shop_{name}")["TaskTemplate"]["ForceUpdate"]
        assert revision == change.after[name].revision > change.before[name].revision
    assert fake.spec("blog_web")["TaskTemplate"]["ForceUpdate"] == 0
    assert fake.spec("shop_web")["Mode"]["Replicated"]["Replicas"] == 2


async def test_redeploy_bound_to_a_service_updates_and_re_images_only_it(
    fake_docker: tuple[FakeDocker, str], swarm: SwarmOrchestrator
) -> None:
    """A service-bound redeploy forces an update of (and with an image, re-images) that
    service only, even when another service of the stack runs the same repository."""
    fake, _ = fake_docker
    fake.add("shop", "worker", replicas=1, image="ghcr.io/acme/shop-api:1.4")
    api = Target(cluster="prod", app="shop", service="api")
    change = await swarm.redeploy("job-s", api)
    assert (list(change.before), list(change.after)) == (["api"], ["api"])
    pushed = await swarm.redeploy("job-si", api, image="ghcr.io/acme/shop-api:1.5")
    assert list(pushed.after) == ["api"]
    revision = fake.spec("shop_api")["TaskTemplate"]["ForceUpdate"]
    assert revision == pushed.after["api"].revision > change.after["api"].revision
    assert fake.spec("shop_api")["TaskTemplate"]["ContainerSpec"]["Image"] == (
        "ghcr.io/acme/shop-api:1.5"
    )
    for untouched in ("shop_web", "shop_agent", "shop_worker"):
        assert fake.spec(untouched)["TaskTemplate"]["ForceUpdate"] == 0
    assert fake.spec("shop_worker")["TaskTemplate"]["ContainerSpec"]["Image"] == (
        "ghcr.io/acme/shop-api:1.4"
    )
    other = await swarm.redeploy("job-so", WEB, image="ghcr.io/acme/shop-api:1.6")
    assert list(other.after) == ["web"]
    assert (
        other.detail
        == "web of shop does not run ghcr.io/acme/shop-api; restarted it, image unchanged"
    )
    with pytest.raises(NotFoundError, match="'gone'"):
        await swarm.redeploy("job-sg", Target(cluster="prod", app="shop", service="gone"))


async def test_redelivered_redeploy_changes_nothing(
    fake_docker: tuple[FakeDocker, str], swarm: SwarmOrchestrator
) -> None:
    """The same job again sends no update and reports the first delivery's change as a duplicate."""
    fake, _ = fake_docker
    first = await swarm.redeploy("job-1", SHOP)
    updates = sum(1 for m, _ in fake.requests if m == "POST")
    again = await swarm.redeploy("job-1", SHOP)
    assert again.duplicate is True
    assert again.after == first.after
    assert sum(1 for m, _ in fake.requests if m == "POST") == updates
    assert fake.spec("shop_web")["TaskTemplate"]["ForceUpdate"] == first.after["web"].revision


async def test_redeploy_with_image_updates_only_the_matching_service(
    fake_docker: tuple[FakeDocker, str], swarm: SwarmOrchestrator
) -> None:
    """A pushed image is rolled onto the services running its repository only."""
    fake, _ = fake_docker
    change = await swarm.redeploy("job-i", SHOP, image="ghcr.io/acme/shop-api:1.5")
    assert list(change.after) == ["api"]
    recorded = await swarm.recorded("job-i", SHOP)
    assert recorded is not None
    assert (recorded.image, recorded.after) == ("ghcr.io/acme/shop-api:1.5", change.after)
    assert fake.spec("shop_api")["TaskTemplate"]["ContainerSpec"]["Image"] == (
        "ghcr.io/acme/shop-api:1.5"
    )
    assert fake.spec("shop_web")["TaskTemplate"]["ContainerSpec"]["Image"] == "nginx:1.27"


async def test_scale_sets_replicas_once_per_job(
    fake_docker: tuple[FakeDocker, str], swarm: SwarmOrchestrator
) -> None:
    """Scaling out by 3 sets Mode.Replicated.Replicas to 5; the redelivery does not add 3 again."""
    fake, _ = fake_docker
    change = await swarm.scale("job-s", WEB, delta=3)
    assert (change.before["web"].replicas, change.after["web"].replicas) == (2, 5)
    again = await swarm.scale("job-s", WEB, delta=3)
    assert again.duplicate is True
    recorded = await swarm.recorded("job-s", WEB)
    assert recorded is not None
    assert recorded.after["web"].replicas == 5
    assert await swarm.recorded("job-never", WEB) is None
    assert fake.spec("shop_web")["Mode"]["Replicated"]["Replicas"] == 5
    assert "job-s" in read_ledger(fake.spec("shop_web")["Labels"])


async def test_scale_in_clamps_at_zero_and_global_services_refuse(
    fake_docker: tuple[FakeDocker, str], swarm: SwarmOrchestrator
) -> None:
    """scale_in stops at 0 and says so; a global-mode service cannot be scaled and says why."""
    fake, _ = fake_docker
    change = await swarm.scale("job-in", WEB, delta=-9)
    assert (change.clamped, change.after["web"].replicas) == (True, 0)
    assert fake.spec("shop_web")["Mode"]["Replicated"]["Replicas"] == 0
    with pytest.raises(PermanentError, match="global mode"):
        await swarm.scale("job-g", Target(cluster="prod", app="shop", service="agent"), delta=1)


async def test_two_workers_scaling_concurrently_lose_no_step(
    fake_docker: tuple[FakeDocker, str],
) -> None:
    """Two adapters updating one service at once meet "update out of sequence", retry, and apply each step once."""
    fake, url = fake_docker
    fake.latency = 0.002
    workers = [SwarmOrchestrator(docker_host=url, conflict_retries=30) for _ in range(2)]
    try:
        changes = await asyncio.gather(
            *[workers[i % 2].scale(f"job-{i}", WEB, delta=1) for i in range(6)]
        )
        again = await asyncio.gather(
            *[workers[(i + 1) % 2].scale(f"job-{i}", WEB, delta=1) for i in range(6)]
        )
    finally:
        for worker in workers:
            await worker.close()
    assert fake.spec("shop_web")["Mode"]["Replicated"]["Replicas"] == 8
    assert fake.out_of_sequence > 0
    assert sorted(c.after["web"].replicas for c in changes) == [3, 4, 5, 6, 7, 8]
    assert all(c.duplicate for c in again)


async def test_out_of_sequence_beyond_the_bound_is_retryable(
    fake_docker: tuple[FakeDocker, str], swarm: SwarmOrchestrator
) -> None:
    """When every update is out of sequence, the adapter inspects again a bounded number of times, then raises ConflictError."""
    fake, _ = fake_docker
    fake.fail("out-of-sequence", method="POST", times=50)
    with pytest.raises(ConflictError, match="kept changing"):
        await swarm.scale("job-c", WEB, delta=1)
    assert sum(1 for m, _ in fake.requests if m == "POST") == 5
    assert fake.spec("shop_web")["Mode"]["Replicated"]["Replicas"] == 2


@pytest.mark.parametrize(
    ("fault", "error", "words"),
    [
        (403, PermanentError, "refused access"),
        (404, NotFoundError, "not found"),
        (500, RetryableError, "answered 500"),
        ("not-a-manager", PermanentError, "not a Swarm manager"),
        ("hang", RetryableError, "did not answer in time"),
    ],
)
async def test_engine_errors_map_to_retryable_or_permanent(
    fake_docker: tuple[FakeDocker, str], fault: int | str, error: type[Exception], words: str
) -> None:
    """Each Engine failure becomes the error kind that tells the worker whether to retry."""
    fake, url = fake_docker
    orchestrator = SwarmOrchestrator(docker_host=url, timeout=0.3)
    await orchestrator.state(SHOP)  # the API version is negotiated before the fault
    fake.fail(fault, suffix="/services/shop_web")
    try:
        with pytest.raises(error, match=words) as caught:
            await orchestrator.scale("job-e", WEB, delta=1)
    finally:
        fake.release()
        await orchestrator.close()
    assert "prod" in str(caught.value)
    assert fake.spec("shop_web")["Mode"]["Replicated"]["Replicas"] == 2


async def test_unreachable_engine_is_retryable() -> None:
    """An endpoint that refuses connections is a retryable failure naming the cluster."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    orchestrator = SwarmOrchestrator(docker_host=f"http://127.0.0.1:{port}", timeout=2.0)
    try:
        with pytest.raises(
            RetryableError, match="cannot reach the Docker engine of cluster 'prod'"
        ):
            await orchestrator.state(SHOP)
    finally:
        await orchestrator.close()


async def test_missing_stack_and_service_are_permanent(swarm: SwarmOrchestrator) -> None:
    """A stack or service that does not exist fails permanently with what to deploy."""
    with pytest.raises(NotFoundError, match="docker stack deploy"):
        await swarm.redeploy("job-n", Target(cluster="prod", app="gone"))
    with pytest.raises(NotFoundError, match="no Swarm service 'shop_gone'"):
        await swarm.scale("job-n2", Target(cluster="prod", app="shop", service="gone"), delta=1)


async def test_docker_host_per_cluster(fake_docker: tuple[FakeDocker, str]) -> None:
    """TRIGGERS_DOCKER_HOST=cluster=url,... routes each cluster to its engine; others fail permanently."""
    _, url = fake_docker
    assert parse_docker_hosts(None) == {"*": None}
    assert parse_docker_hosts(url) == {"*": url}
    orchestrator = SwarmOrchestrator(docker_host=f"prod={url},edge=unix:///run/edge.sock")
    try:
        assert (await orchestrator.state(WEB))["web"].replicas == 2
        with pytest.raises(PermanentError, match="no Docker endpoint for cluster 'qa'"):
            await orchestrator.state(Target(cluster="qa", app="shop"))
    finally:
        await orchestrator.close()
    with pytest.raises(ConfigError, match="TRIGGERS_DOCKER_HOST"):
        parse_docker_hosts("prod=")


async def test_redeploy_that_swarm_rolls_back_fails_with_its_reason(
    fake_docker: tuple[FakeDocker, str], swarm: SwarmOrchestrator
) -> None:
    """A rollout Swarm rolled back is a failed change naming the service and Swarm's message."""
    fake, _ = fake_docker
    fake.rollout = "rollback_completed"
    change = await swarm.redeploy("job-rb", Target(cluster="prod", app="blog"))
    assert change.status == "failed"
    assert change.error is not None
    assert "blog_web: rolled back (update rollback_completed)" in change.error


async def test_redeploy_still_rolling_out_after_the_timeout_fails(
    fake_docker: tuple[FakeDocker, str],
) -> None:
    """A rollout that has not completed within the rollout timeout is failed, saying so."""
    fake, url = fake_docker
    fake.rollout = "updating"
    orchestrator = SwarmOrchestrator(docker_host=url, rollout_timeout=0.3, poll_interval=0.05)
    try:
        change = await orchestrator.redeploy("job-slow", Target(cluster="prod", app="blog"))
    finally:
        await orchestrator.close()
    assert change.status == "failed"
    assert change.error is not None
    assert "rollout not finished after 0.3 s" in change.error


async def test_redeploy_reports_the_tasks_on_the_new_spec_as_the_rollout_goes(
    fake_docker: tuple[FakeDocker, str],
) -> None:
    """A one-task-at-a-time update of 3 replicas is reported 0/3, 1/3, 2/3, then 3/3 (running tasks whose ForceUpdate is the job's), and then succeeds."""
    fake, url = fake_docker
    fake.add("site", "front", replicas=3)
    fake.rollout = "rolling"
    report = Reported()
    orchestrator = SwarmOrchestrator(docker_host=url, poll_interval=0.01)
    try:
        site = Target(cluster="prod", app="site")
        change = await orchestrator.redeploy("job-roll", site, progress=report)
    finally:
        await orchestrator.close()
    assert change.status == "succeeded", change.error
    assert report.of("front") == [(0, 3), (1, 3), (2, 3), (3, 3)]


async def test_revision_never_goes_back_after_a_rollback(
    fake_docker: tuple[FakeDocker, str], swarm: SwarmOrchestrator
) -> None:
    """After a rollback restores an older ForceUpdate, the next redeploy's revision is still higher."""
    fake, _ = fake_docker
    blog = Target(cluster="prod", app="blog")
    first = await swarm.redeploy("job-a", blog)
    second = await swarm.redeploy("job-b", blog)
    service = fake._find("blog_web")
    assert service is not None
    service["Spec"] = service["PreviousSpec"]  # what docker service rollback does
    service["Version"]["Index"] += 3
    third = await swarm.redeploy("job-c", blog)
    revisions = [c.after["web"].revision for c in (first, second, third)]
    assert revisions == sorted(set(revisions))


async def test_job_mode_services_are_named_counted_and_not_rerun(
    fake_docker: tuple[FakeDocker, str], swarm: SwarmOrchestrator
) -> None:
    """A replicated-job service reports its completions, refuses scaling by its mode, and an app redeploy leaves it alone."""
    fake, _ = fake_docker
    migrate = fake.add("shop", "migrate", replicas=None, image="ghcr.io/acme/shop-api:1.4")
    migrate["Spec"]["Mode"] = {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    assert (await swarm.state(SHOP))["migrate"].replicas == 1
    with pytest.raises(PermanentError, match="replicated-job mode"):
        await swarm.scale("job-m", Target(cluster="prod", app="shop", service="migrate"), delta=1)
    change = await swarm.redeploy("job-r", SHOP)
    assert "migrate" not in change.after
    assert change.detail is not None
    assert "job-mode services not re-run: migrate" in change.detail
    assert fake.spec("shop_migrate")["TaskTemplate"]["ForceUpdate"] == 0


async def test_scale_jobs_for_one_service_share_one_write(
    fake_docker: tuple[FakeDocker, str], swarm: SwarmOrchestrator
) -> None:
    """Ten concurrent scale jobs for one service make fewer writes than jobs, meet no conflict, and each is recorded once."""
    fake, _ = fake_docker
    fake.latency = 0.01
    changes = await asyncio.gather(*(swarm.scale(f"job-{i}", WEB, delta=1) for i in range(10)))
    assert fake.spec("shop_web")["Mode"]["Replicated"]["Replicas"] == 12
    assert sorted(c.after["web"].replicas for c in changes) == list(range(3, 13))
    assert sum(1 for m, _ in fake.requests if m == "POST") < 10
    assert fake.out_of_sequence == 0
    ledger = read_ledger(fake.spec("shop_web")["Labels"])
    assert all(f"job-{i}" in ledger for i in range(10))
