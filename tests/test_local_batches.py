"""The local cluster's group commit: many jobs per transaction, each still on its own."""

from __future__ import annotations

import asyncio

import pytest

from shared.errors import NotFoundError
from shared.messages import Target
from workers.orchestrators.local import LocalOrchestrator

pytestmark = pytest.mark.unit

WEB = Target(cluster="demo", app="shop", service="web")


async def test_concurrent_scales_all_apply_in_the_order_asked(cluster: LocalOrchestrator) -> None:
    """Fifty scale-outs issued at once each add one replica, in order, with no update lost."""
    changes = await asyncio.gather(*(cluster.scale(f"job-{i}", WEB, delta=1) for i in range(50)))
    assert [c.after["web"].replicas for c in changes] == list(range(3, 53))
    assert (await cluster.state(WEB))["web"].replicas == 52
    await cluster.close()


async def test_a_failing_job_is_rolled_back_alone(cluster: LocalOrchestrator) -> None:
    """A job for a missing service fails by itself; the jobs batched with it still commit."""
    missing = Target(cluster="demo", app="shop", service="nope")
    outcomes = await asyncio.gather(
        cluster.scale("a", WEB, delta=1),
        cluster.scale("b", missing, delta=1),
        cluster.scale("c", WEB, delta=2),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], NotFoundError)
    assert "'nope' of application 'shop' not found" in str(outcomes[1])
    assert (await cluster.state(WEB))["web"].replicas == 5
    assert cluster.cluster.applied("b") is None
    await cluster.close()


async def test_a_job_repeated_within_one_batch_applies_once(cluster: LocalOrchestrator) -> None:
    """The same job id twice in one batch changes the cluster once; the second is a duplicate."""
    first, second = await asyncio.gather(
        cluster.scale("same", WEB, delta=3), cluster.scale("same", WEB, delta=3)
    )
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.after == first.after
    assert (await cluster.state(WEB))["web"].replicas == 5
    await cluster.close()


async def test_redeploys_batch_with_scales(cluster: LocalOrchestrator) -> None:
    """Redeploy and scale jobs share a batch; each service's revision rises once per redeploy."""
    app = Target(cluster="demo", app="shop")
    await asyncio.gather(
        cluster.redeploy("r1", app),
        cluster.scale("s1", WEB, delta=1),
        cluster.redeploy("r2", app),
    )
    state = await cluster.state(app)
    assert {name: s.revision for name, s in state.items()} == {"api": 3, "web": 3}
    assert state["web"].replicas == 3
    with pytest.raises(NotFoundError):
        await cluster.redeploy("r3", Target(cluster="demo", app="gone"))
    await cluster.close()
