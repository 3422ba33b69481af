"""The Swarm adapter against a real Docker Engine in Swarm mode (tests/support/dockerd.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from shared.errors import PermanentError, RetryableError
from shared.messages import Target
from tests.real.conftest import TINY, create_service
from tests.support.dockerd import Dockerd, free_port_below_ephemeral
from tests.support.registry import running_registry
from workers.orchestrators.ledger import read_ledger
from workers.orchestrators.swarm import SwarmOrchestrator

FAST_ROLLOUT = ("--update-monitor", "500ms", "--update-failure-action", "rollback")


def _spec(daemon: Dockerd, stack: str, name: str) -> Any:
    return daemon.inspect("service", f"{stack}_{name}")["Spec"]


def _running(daemon: Dockerd, stack: str, name: str) -> int:
    out = daemon.docker(
        "service", "ps", f"{stack}_{name}", "--filter", "desired-state=running",
        "--format", "{{.CurrentState}}",
    ).stdout  # fmt: skip
    return sum(1 for line in out.splitlines() if line.startswith("Running"))


async def eventually_running(daemon: Dockerd, stack: str, name: str, count: int) -> None:
    async with asyncio.timeout(150):  # a loaded machine starts containers slowly
        while _running(daemon, stack, name) != count:
            await asyncio.sleep(0.3)


async def test_scale_applies_once_and_tasks_follow(
    real_swarm: Dockerd, stack: str, adapter: SwarmOrchestrator
) -> None:
    """Scaling out by 2 sets 3 replicas on the engine, 3 tasks come up, and the redelivery changes nothing."""
    create_service(real_swarm, stack, "web", replicas=1)
    web = Target(cluster="real", app=stack, service="web")
    change = await adapter.scale("job-s", web, delta=2)
    assert (change.status, change.after["web"].replicas) == ("succeeded", 3)
    assert change.detail is not None
    assert "3 replicas" in change.detail
    again = await adapter.scale("job-s", web, delta=2)
    assert again.duplicate is True
    assert _spec(real_swarm, stack, "web")["Mode"] == {"Replicated": {"Replicas": 3}}
    await eventually_running(real_swarm, stack, "web", 3)


async def test_scale_respects_bounds_on_the_engine(
    real_swarm: Dockerd, stack: str, adapter: SwarmOrchestrator
) -> None:
    """A step beyond max_replicas is clamped at it, and a step down stops at min_replicas."""
    create_service(real_swarm, stack, "web", replicas=2)
    web = Target(cluster="real", app=stack, service="web")
    up = await adapter.scale("job-up", web, delta=5, max_replicas=4)
    assert (up.clamped, up.after["web"].replicas) == (True, 4)
    down = await adapter.scale("job-down", web, delta=-9, min_replicas=1)
    assert (down.clamped, down.after["web"].replicas) == (True, 1)
    assert _spec(real_swarm, stack, "web")["Mode"] == {"Replicated": {"Replicas": 1}}


async def test_redeploy_succeeds_once_the_rollout_completed(
    real_swarm: Dockerd, stack: str, adapter: SwarmOrchestrator
) -> None:
    """A redeploy replaces the tasks and answers succeeded only when Swarm says the update completed."""
    create_service(real_swarm, stack, "web", replicas=2, args=FAST_ROLLOUT)
    await eventually_running(real_swarm, stack, "web", 2)
    change = await adapter.redeploy("job-r", Target(cluster="real", app=stack))
    assert change.status == "succeeded", change.error
    service = real_swarm.inspect("service", f"{stack}_web")
    assert service["UpdateStatus"]["State"] == "completed"
    assert service["Spec"]["TaskTemplate"]["ForceUpdate"] == change.after["web"].revision


async def test_redeploy_to_an_image_no_node_can_pull_fails_with_the_rollback(
    real_swarm: Dockerd, stack: str, adapter: SwarmOrchestrator
) -> None:
    """An image update Swarm cannot pull is rolled back by Swarm and answered failed with its reason, not succeeded."""
    nowhere = f"127.0.0.1:{free_port_below_ephemeral()}/shop/web"
    real_swarm.docker("tag", TINY, f"{nowhere}:1")
    create_service(real_swarm, stack, "web", image=f"{nowhere}:1", args=FAST_ROLLOUT)
    await eventually_running(real_swarm, stack, "web", 1)
    change = await adapter.redeploy(
        "job-bad", Target(cluster="real", app=stack), image=f"{nowhere}:2"
    )
    assert change.status == "failed"
    assert change.error is not None
    assert f"{stack}_web: rolled back" in change.error
    assert _spec(real_swarm, stack, "web")["TaskTemplate"]["ContainerSpec"]["Image"].startswith(
        f"{nowhere}:1"
    )


async def test_private_registry_image_by_digest_with_credentials(
    real_swarm: Dockerd, stack: str, tmp_path: Path
) -> None:
    """An image update by digest from a registry that needs a login rolls out with TRIGGERS_DOCKER_CONFIG's credentials, and fails without them."""
    real_swarm.restart(prefer_offline=False)  # the node must pull, as a real one does
    try:
        change = await _deploy_from_private_registry(real_swarm, stack, tmp_path)
    finally:
        real_swarm.restart()
    assert change.status == "succeeded", change.error
    running = _spec(real_swarm, stack, "api")["TaskTemplate"]["ContainerSpec"]["Image"]
    assert running == change.after["api"].image
    assert "@sha256:" in running


async def _deploy_from_private_registry(daemon: Dockerd, stack: str, tmp_path: Path) -> Any:
    """Push an image to a fresh private registry; roll it out by digest without, then with,
    credentials; the second change (the first must have failed)."""
    real_swarm = daemon
    with running_registry(tmp_path / "registry") as registry:
        repo = f"{registry.address}/shop/api"
        client_config = tmp_path / "cli"
        client_config.mkdir()
        real_swarm.docker("tag", TINY, f"{repo}:1")
        real_swarm.docker(
            "--config", str(client_config), "login", registry.address, "-u", registry.user,
            "--password-stdin", input_text=registry.password,
        )  # fmt: skip
        pushed = real_swarm.docker("--config", str(client_config), "push", f"{repo}:1").stdout
        digest = next(w for w in pushed.split() if w.startswith("sha256:"))
        real_swarm.docker("rmi", f"{repo}:1")  # the node must pull it
        real_swarm.docker("tag", TINY, f"{repo}:0")
        create_service(real_swarm, stack, "api", image=f"{repo}:0", args=FAST_ROLLOUT)
        image = f"{repo}@{digest}"
        target = Target(cluster="real", app=stack)

        without = SwarmOrchestrator(docker_host=real_swarm.url, rollout_timeout=60)
        try:
            refused = await without.redeploy("job-anon", target, image=image)
        finally:
            await without.close()
        assert refused.status == "failed", "the registry let an anonymous pull through"

        auth = base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"auths": {registry.address: {"auth": auth}}}))
        with_auth = SwarmOrchestrator(
            docker_host=real_swarm.url, docker_config=str(config), rollout_timeout=60
        )
        try:
            return await with_auth.redeploy("job-auth", target, image=image)
        finally:
            await with_auth.close()


async def test_job_mode_service_is_named_counted_and_not_rerun(
    real_swarm: Dockerd, stack: str, adapter: SwarmOrchestrator
) -> None:
    """A replicated-job service reports its completions, cannot be scaled, and an app redeploy does not run it again."""
    create_service(real_swarm, stack, "web", replicas=1, args=FAST_ROLLOUT)
    real_swarm.docker(
        "service", "create", "--detach", "--name", f"{stack}_migrate", "--mode", "replicated-job",
        "--label", f"com.docker.stack.namespace={stack}", TINY, "/bin/true",
    )  # fmt: skip
    before = real_swarm.inspect("service", f"{stack}_migrate")["Spec"]["TaskTemplate"]
    state = await adapter.state(Target(cluster="real", app=stack))
    assert state["migrate"].replicas == 1
    with pytest.raises(PermanentError, match="replicated-job mode"):
        await adapter.scale("job-m", Target(cluster="real", app=stack, service="migrate"), delta=1)
    change = await adapter.redeploy("job-app", Target(cluster="real", app=stack))
    assert sorted(change.after) == ["web"]
    assert real_swarm.inspect("service", f"{stack}_migrate")["Spec"]["TaskTemplate"] == before


async def test_concurrent_scale_jobs_meet_no_conflict_on_the_engine(
    real_swarm: Dockerd, stack: str, adapter: SwarmOrchestrator
) -> None:
    """Thirty scale jobs for one service at once all apply, and the engine logs no "update out of sequence"."""
    create_service(real_swarm, stack, "web", replicas=0)
    web = Target(cluster="real", app=stack, service="web")
    conflicts = real_swarm.log_count("update out of sequence")
    changes = await asyncio.gather(*(adapter.scale(f"job-{i}", web, delta=1) for i in range(30)))
    assert sorted(c.after["web"].replicas for c in changes) == list(range(1, 31))
    assert real_swarm.log_count("update out of sequence") == conflicts
    ledger = read_ledger(_spec(real_swarm, stack, "web")["Labels"])
    assert "job-29" in ledger or "job-0" in ledger


async def test_frozen_and_stopped_engine_are_retryable_then_recover(
    real_swarm: Dockerd, stack: str
) -> None:
    """A frozen engine times out and a stopped one refuses: both retryable; once back, the job applies."""
    create_service(real_swarm, stack, "web", replicas=1)
    web = Target(cluster="real", app=stack, service="web")
    adapter = SwarmOrchestrator(docker_host=real_swarm.url, timeout=1.0)
    try:
        await adapter.state(web)
        real_swarm.freeze()
        try:
            with pytest.raises(RetryableError, match="did not answer in time"):
                await adapter.scale("job-f", web, delta=1)
        finally:
            real_swarm.thaw()
        real_swarm.stop()
        try:
            with pytest.raises(RetryableError, match="cannot reach the Docker engine"):
                await adapter.scale("job-f", web, delta=1)
        finally:
            real_swarm.start()
        async with asyncio.timeout(60):
            while True:
                try:
                    change = await adapter.scale("job-f", web, delta=1)
                    break
                except RetryableError:  # the manager is electing itself again
                    await asyncio.sleep(0.5)
    finally:
        await adapter.close()
    assert change.after["web"].replicas == 2
