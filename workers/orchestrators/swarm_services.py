"""What the Swarm adapter reads and how it judges it: `TRIGGERS_DOCKER_HOST`, a service as
inspected, the outcome of its rolling update, and the one mapping of Engine errors to
retryable or permanent ones."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

import aiodocker

from shared.errors import ConfigError, ConflictError, NotFoundError, PermanentError, RetryableError
from shared.messages import ServiceState, Target

__all__ = ["Mode", "Service", "mapped_error", "parse_docker_hosts", "rollout_outcome"]


def parse_docker_hosts(value: str | None) -> dict[str, str | None]:
    """``TRIGGERS_DOCKER_HOST`` as {cluster: url}; key ``*`` serves every cluster."""
    if not value:
        return {"*": None}
    if "=" not in value:
        return {"*": value}
    hosts: dict[str, str | None] = {}
    for part in value.split(","):
        name, sep, url = part.strip().partition("=")
        if not sep or not name or not url:
            msg = f"TRIGGERS_DOCKER_HOST must be a URL or cluster=url,...; got a part {part!r}"
            raise ConfigError(msg)
        hosts[name.strip()] = url.strip()
    return hosts


Mode = Literal["replicated", "global", "replicated-job", "global-job"]
_MODES: dict[str, Mode] = {
    "Replicated": "replicated",
    "Global": "global",
    "ReplicatedJob": "replicated-job",
    "GlobalJob": "global-job",
}
# UpdateStatus.State values that end a rollout other than "completed".
_ROLLOUT_FAILED = {
    "paused": "paused",
    "rollback_started": "rolled back",
    "rollback_paused": "rolled back, and the rollback paused",
    "rollback_completed": "rolled back",
}


class Service:
    """One inspected Swarm service."""

    def __init__(self, data: Mapping[str, Any], stack: str) -> None:
        self.data = data
        self.id: str = data["ID"]
        self.version: int = data["Version"]["Index"]
        self.spec: dict[str, Any] = copy.deepcopy(dict(data["Spec"]))
        full = str(self.spec.get("Name", ""))
        self.name = full.removeprefix(f"{stack}_")

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.spec.get("Labels") or {})

    @property
    def mode(self) -> Mode:
        return next(
            (m for k, m in _MODES.items() if k in (self.spec.get("Mode") or {})), "replicated"
        )

    @property
    def is_job(self) -> bool:
        return self.mode.endswith("-job")

    @property
    def replicas(self) -> int | None:
        """The replicated count; for a replicated job, its total completions; else None."""
        mode = self.spec.get("Mode") or {}
        if (replicated := mode.get("Replicated")) is not None:
            return int(replicated.get("Replicas", 1))
        if (job := mode.get("ReplicatedJob")) is not None:
            return int(job.get("TotalCompletions") or job.get("MaxConcurrent") or 1)
        return None

    @property
    def image(self) -> str:
        return str(self.spec["TaskTemplate"].get("ContainerSpec", {}).get("Image", ""))

    @property
    def revision(self) -> int:
        return int(self.spec["TaskTemplate"].get("ForceUpdate", 0))

    @property
    def state(self) -> ServiceState:
        return ServiceState(replicas=self.replicas or 0, image=self.image, revision=self.revision)


def rollout_outcome(service: Service, baseline: str) -> str | None:
    """None while the update written over the state of `baseline` (its ``UpdatedAt``) is
    rolling out; "" once it completed; else why it did not (Swarm's state and message).

    Until Swarm picks the update up, the status is absent or an older one: every status
    write bumps ``UpdatedAt``, so an older status started no later than `baseline`.
    """
    status = service.data.get("UpdateStatus")
    started = _timestamp((status or {}).get("StartedAt"))
    previous = _timestamp(baseline)
    if not status or started is None or (previous is not None and started <= previous):
        return None
    state = status.get("State")
    if state == "completed":
        return ""
    if state in _ROLLOUT_FAILED:
        message = status.get("Message") or "no message"
        return f"{_ROLLOUT_FAILED[state]} ({message})"
    return None


def _timestamp(value: object) -> str | None:
    """An Engine RFC 3339 time in a form that sorts as time (nanoseconds padded)."""
    if not isinstance(value, str) or "T" not in value:
        return None
    body = value.removesuffix("Z")
    whole, _, fraction = body.partition(".")
    return f"{whole}.{fraction.ljust(9, '0')[:9]}"


def mapped_error(exc: aiodocker.DockerError, target: Target, where: str) -> Exception:  # noqa: PLR0911 - one return per error class reads as a table
    """The Engine error as a retryable or permanent error naming the cluster."""
    reason = str(exc.message)[:300]
    code = exc.status
    place = f"cluster {target.cluster!r} ({where})"
    if code == 900:  # aiodocker's code for a refused or failed connection
        return RetryableError(f"cannot reach the Docker engine of {place}: {reason}; will retry")
    if code == 404:
        return NotFoundError(f"not found on {place}: {reason}")
    if code in (401, 403):
        return PermanentError(
            f"the Docker engine of {place} refused access: {reason} ({code}); check the "
            "endpoint's TLS client certificate or socket permissions"
        )
    if code == 503 and "swarm" in reason.lower():
        return PermanentError(
            f"the Docker engine of {place} is not a Swarm manager: {reason}; point "
            "TRIGGERS_DOCKER_HOST at a manager node"
        )
    if code == 409:
        return ConflictError(f"conflicting update on {place}: {reason}; will retry")
    if code >= 500 or code == 429:
        return RetryableError(f"the Docker engine of {place} answered {code}: {reason}; will retry")
    return PermanentError(f"the Docker engine of {place} rejected the change: {reason} ({code})")
