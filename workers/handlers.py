"""Handlers: plain async functions of a decoded command and their dependencies.

They raise `RetryableError` or `PermanentError`; the runner (workers/worker.py) turns
outcomes into ack, retry or dead-letter.
"""

from __future__ import annotations

from shared.images import normalize_repository, same_repository
from shared.messages import CommandEnvelope, Redeploy, Scale, Target
from workers.orchestrators.base import Change, Orchestrator, ProgressReport

__all__ = ["apply_command"]


async def apply_command(
    envelope: CommandEnvelope,
    orchestrator: Orchestrator,
    progress: ProgressReport | None = None,
) -> Change:
    """Apply one command through the orchestrator, once per job id; a redeploy's rollout
    progress goes to `progress`."""
    match envelope.command:
        case Redeploy(image=image, only_matching=only_matching):
            if image is not None and only_matching:
                skipped = await _skip_unless_running(envelope.target, image, orchestrator)
                if skipped is not None:
                    return skipped
            return await orchestrator.redeploy(
                envelope.job_id,
                envelope.target,
                image=image,
                issued_at=envelope.issued_at,
                progress=progress,
            )
        case Scale(direction=direction, step=step) as scale:
            delta = step if direction == "scale_out" else -step
            return await orchestrator.scale(
                envelope.job_id,
                envelope.target,
                delta=delta,
                min_replicas=scale.min_replicas,
                max_replicas=scale.max_replicas,
            )


async def _skip_unless_running(
    target: Target, image: str, orchestrator: Orchestrator
) -> Change | None:
    # An image-update trigger not bound to a repository learns here whether the pushed
    # image is the application's (or, bound to a service, that service's): nothing
    # changes, so no job needs recording.
    services = await orchestrator.state(target)
    if not services or any(same_repository(s.image, image) for s in services.values()):
        return None  # a missing application fails in the adapter, with its own message
    repository = normalize_repository(image)
    return Change(
        status="skipped",
        before=services,
        after=services,
        detail=(
            f"{target.service} of {target.app} does not run {repository}; "
            "the pushed image is not this service's, nothing changed"
            if target.service
            else f"no service of {target.app} runs {repository}; "
            "the pushed image is not this application's, nothing changed"
        ),
        image=image,
    )
