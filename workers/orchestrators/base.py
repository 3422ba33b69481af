"""The orchestrator protocol: read state, redeploy an application, scale a service.

Every change takes the command's job id. An adapter applies a job's effect at most once:
it records the job with the change, atomically where the platform allows, and answers a
repeat with the recorded change marked ``duplicate``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Literal, Protocol

import msgspec

from shared.images import normalize_repository
from shared.messages import RolloutProgress, ServiceState, Target

__all__ = [
    "Change",
    "Orchestrator",
    "ProgressReport",
    "image_repository",
    "redeploy_plan",
    "scale_change",
]

# How a rollout is going, per service being rolled out; called on every poll of it (the
# caller decides what to publish), never raises.
ProgressReport = Callable[[dict[str, RolloutProgress]], Awaitable[None]]


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """What an adapter did (or found already done) for one job.

    ``failed`` is a change the platform took but did not carry out: a rollout that was
    paused, rolled back or did not finish in time; `error` says why. It was applied (and
    recorded), so it is answered, not retried.
    """

    status: Literal["succeeded", "skipped", "failed"]
    before: dict[str, ServiceState]
    after: dict[str, ServiceState]
    detail: str | None = None
    clamped: bool = False
    applied_step: int | None = None
    image: str | None = None
    duplicate: bool = False
    error: str | None = None


class Orchestrator(Protocol):
    """A container platform, as the worker sees it."""

    name: str

    async def state(self, target: Target) -> dict[str, ServiceState]:
        """The services of the target's application (or just the target's service)."""
        ...

    async def recorded(self, job_id: str, target: Target) -> Change | None:
        """The change this job made to `target`, if the adapter knows it was applied; else None.

        Asked when a job gives up after retryable errors: the last attempt may have
        changed the platform before its answer was lost. Adapters that keep the ledger on
        the workloads (Kubernetes, Swarm) need the target to know where to look.
        """
        ...

    async def redeploy(
        self,
        job_id: str,
        target: Target,
        *,
        image: str | None = None,
        issued_at: datetime | None = None,
        progress: ProgressReport | None = None,
    ) -> Change:
        """Restart every service of the application (only the target's service when it
        names one); with `image`, roll that image out where it matches.

        `issued_at` is the command's timestamp: adapters that stamp a restart (Kubernetes'
        ``restartedAt``) use it, so a redelivered command writes the same value again.
        Adapters that wait for the rollout tell `progress` how far it got as they poll.
        """
        ...

    async def scale(
        self,
        job_id: str,
        target: Target,
        *,
        delta: int,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
    ) -> Change:
        """Add `delta` replicas (negative to remove) to the target's service.

        The result stays within [`min_replicas`, `max_replicas`] and never below 0:
        adapters read the live count and let `scale_change` clamp it.
        """
        ...

    async def close(self) -> None:
        """Release clients and connections."""
        ...


def image_repository(image: str) -> str:
    """The canonical ``registry/path`` of an image reference, without tag or digest.

    Every spelling of one repository gives the same answer (``nginx``,
    ``docker.io/library/nginx:1.27``), so a registry push matches the services running it
    whichever way each side writes the name.
    """
    return normalize_repository(image)


def redeploy_plan(
    images: Mapping[str, Sequence[str]], target: Target, image: str | None
) -> tuple[list[str], bool, str | None]:
    """Which services a redeploy restarts, whether it rolls `image` onto them, and why.

    `images` maps each service the adapter read for the target to the images its
    containers run: every service of the app, or the one service a service-bound trigger
    names (read with `Orchestrator.state`'s rule), and only that one is ever touched. With
    an image, only the services running that image's repository are touched, so a push of
    one image never changes another service's image.
    """
    names = [target.service] if target.service else sorted(images)
    if image is None:
        return names, False, None
    repository = image_repository(image)
    matching = [n for n in names if any(image_repository(i) == repository for i in images[n])]
    if matching:
        return matching, True, None
    if target.service:
        return (
            names,
            False,
            f"{target.service} of {target.app} does not run {repository}; restarted it, "
            "image unchanged",
        )
    return (
        names,
        False,
        f"no service of {target.app} runs {repository}; restarted all, image unchanged",
    )


def scale_change(
    service: str,
    before: ServiceState,
    delta: int,
    *,
    revision_step: int = 0,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
) -> Change:
    """The change that adding `delta` replicas to a service makes, within its bounds.

    Every adapter uses this one rule: ``current + delta`` is clamped to
    [`min_replicas`, `max_replicas`] and never below 0. A step never moves the count
    against its direction: a service already above its maximum is left alone by a
    scale_out (and likewise below its minimum), so a bound added later never causes a
    surprise change. `revision_step` is how much the platform's revision counter moves on
    a replica change (Kubernetes bumps `metadata.generation`; the local cluster and Swarm
    do not).
    """
    current = before.replicas
    wanted = current + delta
    if delta >= 0:
        limit = f"max_replicas {max_replicas}"
        new = max(current, wanted if max_replicas is None else min(wanted, max_replicas))
    else:
        limit = f"min_replicas {min_replicas}" if min_replicas else "0"
        new = min(current, max(wanted, min_replicas or 0, 0))
    direction = "scale_out" if delta >= 0 else "scale_in"
    clamped = new != wanted
    if new == current:
        return Change(
            status="skipped",
            before={service: before},
            after={service: before},
            detail=f"{service} already has {current} replicas (limit {limit}); nothing to {direction}",
            clamped=clamped,
            applied_step=0,
        )
    after = msgspec.structs.replace(before, replicas=new, revision=before.revision + revision_step)
    return Change(
        status="succeeded",
        before={service: before},
        after={service: after},
        detail=(
            f"{direction} clamped at {limit}: changed {service} by {abs(new - current)}"
            f" of {abs(delta)} replicas"
            if clamped
            else None
        ),
        clamped=clamped,
        applied_step=abs(new - current),
    )
