"""The orchestrator protocol: read state, redeploy an application, scale a service.

Every change takes the command's job id. An adapter applies a job's effect at most once:
it records the job with the change, atomically where the platform allows, and answers a
repeat with the recorded change marked ``duplicate``.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from shared.messages import ServiceState, Target

__all__ = ["Change", "Orchestrator", "image_repository"]


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """What an adapter did (or found already done) for one job."""

    status: Literal["succeeded", "skipped"]
    before: dict[str, ServiceState]
    after: dict[str, ServiceState]
    detail: str | None = None
    clamped: bool = False
    applied_step: int | None = None
    image: str | None = None
    duplicate: bool = False


class Orchestrator(Protocol):
    """A container platform, as the worker sees it."""

    name: str

    async def state(self, target: Target) -> dict[str, ServiceState]:
        """The services of the target's application (or just the target's service)."""
        ...

    async def recorded(self, job_id: str) -> Change | None:
        """The change this job made, if the adapter knows it was applied; else None.

        Asked when a job gives up after retryable errors: the last attempt may have
        changed the platform before its answer was lost.
        """
        ...

    async def redeploy(self, job_id: str, target: Target, *, image: str | None = None) -> Change:
        """Restart every service of the application; with `image`, roll that image out."""
        ...

    async def scale(self, job_id: str, target: Target, *, delta: int) -> Change:
        """Add `delta` replicas (negative to remove) to the target's service, never below 0."""
        ...

    async def close(self) -> None:
        """Release clients and connections."""
        ...


def image_repository(image: str) -> str:
    """``registry/name`` of an image reference, without tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return name
