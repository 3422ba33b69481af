"""Handlers: plain async functions of a decoded command and their dependencies.

They raise `RetryableError` or `PermanentError`; the runner (workers/worker.py) turns
outcomes into ack, retry or dead-letter.
"""

from __future__ import annotations

from shared.messages import CommandEnvelope, Redeploy, Scale
from workers.orchestrators.base import Change, Orchestrator

__all__ = ["apply_command"]


async def apply_command(envelope: CommandEnvelope, orchestrator: Orchestrator) -> Change:
    """Apply one command through the orchestrator, once per job id."""
    match envelope.command:
        case Redeploy(image=image):
            return await orchestrator.redeploy(
                envelope.job_id, envelope.target, image=image, issued_at=envelope.issued_at
            )
        case Scale(direction=direction, step=step):
            delta = step if direction == "scale_out" else -step
            return await orchestrator.scale(envelope.job_id, envelope.target, delta=delta)
