"""The real Swarm of the session: one private dockerd, started once, always stopped."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Generator, Iterator

import pytest

from shared.broker import AmqpBus
from shared.settings import Settings
from tests.support.dockerd import Dockerd, DockerdUnavailable, running_swarm
from workers.applied import AppliedJobs, open_applied_jobs
from workers.orchestrators.swarm import STACK_LABEL, SwarmOrchestrator
from workers.worker import Worker

TINY = "tiny:1"


@pytest.fixture(scope="session")
def real_swarm() -> Iterator[Dockerd]:
    """A one-node Swarm on a dockerd of its own, with the busybox image ``tiny:1``.

    Skipped, with the reason, only when dockerd or busybox is not installed (.ci/run
    installs them); a daemon that is installed but fails to start fails the tests.
    """
    try:
        with running_swarm() as daemon:
            daemon.build_image(TINY)
            yield daemon
    except DockerdUnavailable as exc:
        if "not installed" in str(exc):
            pytest.skip(str(exc))
        raise


@pytest.fixture
def stack(real_swarm: Dockerd) -> Iterator[str]:
    """A fresh stack name for the test; its services are removed afterwards."""
    name = f"s{uuid.uuid4().hex[:8]}"
    yield name
    services = real_swarm.docker(
        "service", "ls", "-q", "--filter", f"label={STACK_LABEL}={name}", check=False
    ).stdout.split()
    if services:
        real_swarm.docker("service", "rm", *services, check=False)


def create_service(
    daemon: Dockerd,
    stack: str,
    name: str,
    *,
    replicas: int = 1,
    image: str = TINY,
    args: tuple[str, ...] = (),
) -> None:
    """A service of `stack` as ``docker stack deploy`` labels it, with no network, no ports."""
    daemon.docker(
        "service", "create", "--detach", "--name", f"{stack}_{name}",
        "--label", f"{STACK_LABEL}={stack}", "--replicas", str(replicas),
        "--stop-grace-period", "1s", "--update-delay", "0s", *args, image,
    )  # fmt: skip


@pytest.fixture
async def adapter(real_swarm: Dockerd) -> AsyncIterator[SwarmOrchestrator]:
    """The Swarm adapter on the real engine."""
    orchestrator = SwarmOrchestrator(docker_host=real_swarm.url, timeout=30, rollout_timeout=60)
    yield orchestrator
    await orchestrator.close()


@pytest.fixture
async def applied(settings: Settings) -> AsyncIterator[AppliedJobs]:
    """The durable record of applied jobs, in the test's database."""
    opened = open_applied_jobs(settings.database)
    await opened.start()
    yield opened
    await opened.close()


@pytest.fixture
async def swarm_worker(
    settings: Settings, adapter: SwarmOrchestrator, applied: AppliedJobs, bus: AmqpBus
) -> AsyncIterator[Worker]:
    """A worker on the real Swarm, with the durable record, as `triggers worker` runs it."""
    amqp = AmqpBus.from_settings(settings, "test-swarm-worker")
    await amqp.start()
    running = Worker(settings, amqp, adapter, applied=applied)
    await running.start()
    yield running
    await running.stop()
    await amqp.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI a real-daemon test that skips fails instead: .ci/run installs every daemon.

    On a developer's machine without them the tests skip, saying what to install.
    """
    report = yield
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where it must run: {report.longrepr}"
    return report
