"""A redeploy's `running` notices on a real Swarm carry how many tasks run the new spec."""

from __future__ import annotations

from shared.broker import AmqpBus
from shared.messages import Target
from shared.settings import Settings
from tests.real.conftest import create_service
from tests.real.test_swarm_engine import FAST_ROLLOUT, eventually_running
from tests.support.dockerd import Dockerd
from tests.support.events import redeploy_in_steps
from workers.worker import Worker


async def test_redeploy_is_running_with_updated_tasks_before_it_succeeds(
    real_swarm: Dockerd, stack: str, swarm_worker: Worker, bus: AmqpBus, settings: Settings
) -> None:
    """A redeploy of 3 replicas updated one at a time shows `running` with updated < 3 of 3 tasks at least once, never going back, before its succeeded result."""
    create_service(
        real_swarm, stack, "web", replicas=3, args=(*FAST_ROLLOUT, "--update-parallelism", "1")
    )
    await eventually_running(real_swarm, stack, "web", 3)
    web = Target(cluster="real", app=stack, service="web")
    await redeploy_in_steps(bus, settings.amqp_url, web, service="web", total=3, within=90)
