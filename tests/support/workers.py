"""Workers, recorders and result listeners in this process, and a local cluster to act on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import pytest

from shared.broker import AmqpBus, Bus
from shared.jobs import JobRecord, JobStore
from shared.messages import ResultEvent, ServiceState, Target
from shared.settings import Settings
from tests.support.unit_lane import is_unit
from tests.support.waiting import eventually
from workers.orchestrators.base import Change, Orchestrator, ProgressReport
from workers.orchestrators.local import LocalOrchestrator
from workers.recorder import Recorder
from workers.worker import Worker

__all__ = ["Results", "WrappedOrchestrator", "recorded"]


@pytest.fixture
def cluster(settings: Settings) -> LocalOrchestrator:
    """The test's local cluster, seeded with demo/shop (web: 2 replicas, api: 1)."""
    orchestrator = LocalOrchestrator(settings.local_state)
    orchestrator.cluster.set_service("demo", "shop", "web", replicas=2, image="nginx:1.27")
    orchestrator.cluster.set_service(
        "demo", "shop", "api", replicas=1, image="ghcr.io/acme/shop-api:1.4.2"
    )
    return orchestrator


@dataclass
class Results:
    """Result events received on a queue bound to `triggers.results`."""

    events: list[ResultEvent] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def add(self, event: ResultEvent) -> None:
        """Record an event (the bus's handler)."""
        async with self.arrived:
            self.events.append(event)
            self.arrived.notify_all()

    def for_job(self, job_id: str) -> list[ResultEvent]:
        """Every event of one job."""
        return [e for e in self.events if e.job_id == job_id]

    async def wait_for(
        self, job_id: str, count: int = 1, within: float = 10.0
    ) -> list[ResultEvent]:
        """Wait until `count` events of the job arrived."""
        async with asyncio.timeout(within), self.arrived:
            await self.arrived.wait_for(lambda: len(self.for_job(job_id)) >= count)
        return self.for_job(job_id)


@pytest.fixture
async def results(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Results]:
    """Every result event published during the test (on the test's in-process bus, for a
    `unit` test)."""
    collected = Results()
    if is_unit(request.node):
        shared: Bus = request.getfixturevalue("bus")
        await shared.subscribe_results(collected.add)
        yield collected
        return
    amqp = AmqpBus.from_settings(settings, "test-results")
    await amqp.start()
    await amqp.subscribe_results(collected.add)
    yield collected
    await amqp.close()


@contextlib.asynccontextmanager
async def _own_bus(settings: Settings, shared: Bus, role: str) -> AsyncIterator[Bus]:
    """A connection of its own to the test's broker; the shared in-process bus as it is."""
    if not isinstance(shared, AmqpBus):
        yield shared
        return
    amqp = AmqpBus.from_settings(settings, role)
    await amqp.start()
    try:
        yield amqp
    finally:
        await amqp.close()


@pytest.fixture
async def worker(settings: Settings, cluster: LocalOrchestrator, bus: Bus) -> AsyncIterator[Worker]:
    """A worker in this process, on its own connection."""
    async with _own_bus(settings, bus, "test-worker") as own:
        running = Worker(settings, own, cluster)
        await running.start()
        yield running
        await running.stop()


@pytest.fixture
async def recorder(settings: Settings, jobs: JobStore, bus: Bus) -> AsyncIterator[Recorder]:
    """A recorder in this process, on its own connection, writing the test's history."""
    async with _own_bus(settings, bus, "test-recorder") as own:
        running = Recorder(settings, own, jobs)
        await running.start()
        yield running
        await running.stop()


async def recorded(jobs: JobStore, job_id: str, status: str) -> JobRecord:
    """The job once the recorder has it in `status`."""

    async def probe() -> JobRecord | None:
        job = await jobs.get(job_id)
        return job if job is not None and job.status == status else None

    return await eventually(probe, what=f"job {job_id} recorded as {status}")


class WrappedOrchestrator:
    """Delegates everything to an inner orchestrator; tests override what they perturb."""

    def __init__(self, inner: Orchestrator) -> None:
        self.inner = inner
        self.name = inner.name

    async def state(self, target: Target) -> dict[str, ServiceState]:
        """The inner orchestrator's state."""
        return await self.inner.state(target)

    async def recorded(self, job_id: str, target: Target) -> Change | None:
        """The inner orchestrator's ledger."""
        return await self.inner.recorded(job_id, target)

    async def before_change(self, job_id: str) -> None:
        """Called first by `redeploy` and `scale`: a test holds or fails a job here."""

    async def redeploy(
        self,
        job_id: str,
        target: Target,
        *,
        image: str | None = None,
        issued_at: datetime | None = None,
        progress: ProgressReport | None = None,
    ) -> Change:
        """Redeploy through the inner orchestrator."""
        await self.before_change(job_id)
        return await self.inner.redeploy(
            job_id, target, image=image, issued_at=issued_at, progress=progress
        )

    async def scale(
        self,
        job_id: str,
        target: Target,
        *,
        delta: int,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
    ) -> Change:
        """Scale through the inner orchestrator."""
        await self.before_change(job_id)
        return await self.inner.scale(
            job_id, target, delta=delta, min_replicas=min_replicas, max_replicas=max_replicas
        )

    async def close(self) -> None:
        """The inner orchestrator is the fixture's to close."""
