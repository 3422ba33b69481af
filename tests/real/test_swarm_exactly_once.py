"""Exactly-once on a real Swarm when the platform rewrites the services between deliveries.

A worker with the durable record of applied jobs (workers/applied.py) gets the same
command twice; in between, ``docker service rollback`` or ``docker stack deploy`` rewrites
the service's labels, erasing the job's record there.
"""

from __future__ import annotations

from pathlib import Path

from shared.broker import AmqpBus
from shared.messages import CommandEnvelope, Redeploy, Scale, Target, new_job_id
from tests.real.conftest import TINY, create_service
from tests.support.dockerd import Dockerd
from tests.support.workers import Results
from workers.orchestrators.ledger import read_ledger
from workers.worker import Worker


def _command(stack: str, command: Scale | Redeploy, service: str | None = None) -> CommandEnvelope:
    return CommandEnvelope(
        job_id=new_job_id(),
        trigger_id="t" * 26,
        target=Target(cluster="real", app=stack, service=service),
        command=command,
    )


async def test_job_redelivered_after_a_rollback_is_not_applied_again(
    real_swarm: Dockerd, stack: str, swarm_worker: Worker, bus: AmqpBus, results: Results
) -> None:
    """After docker service rollback erased the label record, the redelivered scale job is a duplicate and changes nothing."""
    create_service(real_swarm, stack, "web", replicas=1)
    envelope = _command(stack, Scale(direction="scale_out", step=2), "web")
    await bus.publish_command(envelope)
    (first,) = await results.wait_for(envelope.job_id, within=60)
    assert (first.status, first.after["web"].replicas) == ("succeeded", 3)

    real_swarm.docker("service", "rollback", "--detach", f"{stack}_web")
    spec = real_swarm.inspect("service", f"{stack}_web")["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 1
    assert envelope.job_id not in read_ledger(spec.get("Labels")), "rollback kept the label"

    await bus.publish_command(envelope)
    _, second = await results.wait_for(envelope.job_id, count=2, within=60)
    assert (second.status, second.duplicate) == ("succeeded", True)
    assert second.after == first.after
    spec = real_swarm.inspect("service", f"{stack}_web")["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 1


async def test_job_redelivered_after_a_stack_redeploy_is_not_applied_again(
    real_swarm: Dockerd,
    stack: str,
    swarm_worker: Worker,
    bus: AmqpBus,
    results: Results,
    tmp_path: Path,
) -> None:
    """After docker stack deploy rewrote the service, the redelivered redeploy is a duplicate, and the next one's revision is higher."""
    compose = tmp_path / "compose.yaml"
    compose.write_text(
        "services:\n"
        f"  web:\n    image: {TINY}\n    stop_grace_period: 1s\n"
        "    networks: [hostnet]\n"
        "    deploy: {replicas: 1, update_config: {monitor: 500ms}}\n"
        "networks:\n  hostnet: {external: true, name: host}\n"
    )
    real_swarm.docker("stack", "deploy", "-c", str(compose), stack)
    envelope = _command(stack, Redeploy())
    await bus.publish_command(envelope)
    (first,) = await results.wait_for(envelope.job_id, within=90)
    assert first.status == "succeeded", first.error
    revision = first.after["web"].revision

    real_swarm.docker("stack", "deploy", "-c", str(compose), stack)
    labels = real_swarm.inspect("service", f"{stack}_web")["Spec"].get("Labels")
    assert envelope.job_id not in read_ledger(labels), "stack deploy kept the label"

    await bus.publish_command(envelope)
    _, second = await results.wait_for(envelope.job_id, count=2, within=60)
    assert (second.duplicate, second.after["web"].revision) == (True, revision)
    template = real_swarm.inspect("service", f"{stack}_web")["Spec"]["TaskTemplate"]
    assert template["ForceUpdate"] == revision

    real_swarm.docker("service", "rollback", "--detach", f"{stack}_web")
    later = _command(stack, Redeploy())
    await bus.publish_command(later)
    (third,) = await results.wait_for(later.job_id, within=90)
    assert third.after["web"].revision > revision
