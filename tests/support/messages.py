"""Commands and result events as the services would publish them."""

from __future__ import annotations

from datetime import timedelta

from shared.messages import (
    CommandEnvelope,
    ResultEvent,
    Scale,
    ServiceState,
    Source,
    Status,
    Target,
    new_job_id,
    utcnow,
)

__all__ = ["result_event", "scale_command"]


def scale_command(step: int = 1, direction: str = "scale_out") -> CommandEnvelope:
    """A scale command for demo/shop/web with a fresh job id, as the gateway would publish it."""
    return CommandEnvelope(
        job_id=new_job_id(),
        trigger_id="t" * 26,
        target=Target(cluster="demo", app="shop", service="web"),
        command=Scale(direction="scale_in" if direction == "scale_in" else "scale_out", step=step),
    )


def result_event(
    job_id: str, app: str = "shop", status: Status = "succeeded", *, ago: float = 0
) -> ResultEvent:
    """A result of demo/<app>/web (2 -> 5 replicas in 40 ms) issued `ago` seconds ago."""
    issued = utcnow() - timedelta(seconds=ago)
    state = ServiceState(replicas=2, image="nginx:1.27", revision=1)
    return ResultEvent(
        job_id=job_id,
        trigger_id="t" * 16,
        action="scale",
        cluster="demo",
        app=app,
        service="web",
        status=status,
        before={"web": state},
        after={"web": ServiceState(replicas=5, image="nginx:1.27", revision=1)},
        correlation_id=f"req-{job_id[:4]}",
        source=Source(remote="10.0.0.4", user_agent="curl/8.5"),
        issued_at=issued,
        finished_at=issued + timedelta(milliseconds=40),
        duration_ms=40.0,
    )
