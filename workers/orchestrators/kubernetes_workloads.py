"""What the Kubernetes adapter reads and how it judges it: a workload as read, the rollout
rules of ``kubectl rollout status``, a scale left pending in a ledger, and the one mapping
of client and API errors to retryable or permanent ones."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
from lightkube import ApiError
from lightkube.resources.apps_v1 import Deployment, StatefulSet

from shared.errors import ConflictError, NotFoundError, PermanentError, RetryableError
from shared.messages import RolloutProgress, ServiceState, Target
from workers.orchestrators.ledger import Ledger, Record, read_ledger

__all__ = [
    "FIELD_MANAGER",
    "KINDS",
    "NAME",
    "PART_OF",
    "RESTARTED_AT",
    "Kind",
    "Workload",
    "api_errors",
    "conflict_message",
    "conflict_retry",
    "paused_message",
    "pending_scale",
    "rollout_counts",
    "rollout_status",
]

PART_OF = "app.kubernetes.io/part-of"
NAME = "app.kubernetes.io/name"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
FIELD_MANAGER = "container-triggers"

Kind = type[Deployment] | type[StatefulSet]
KINDS: tuple[Kind, ...] = (Deployment, StatefulSet)


@dataclass(frozen=True)
class Workload:
    """A Deployment or StatefulSet as read, with the fields the adapter uses."""

    obj: Deployment | StatefulSet

    @property
    def kind(self) -> Kind:
        return Deployment if isinstance(self.obj, Deployment) else StatefulSet

    @property
    def kind_name(self) -> str:
        return "deployment" if isinstance(self.obj, Deployment) else "statefulset"

    @property
    def name(self) -> str:
        assert self.obj.metadata is not None  # noqa: S101 - the API always sends metadata
        return self.obj.metadata.name or ""

    @property
    def resource_version(self) -> str | None:
        return self.obj.metadata.resourceVersion if self.obj.metadata else None

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.obj.metadata.labels or {}) if self.obj.metadata else {}

    @property
    def ledger(self) -> Ledger:
        return read_ledger(self.obj.metadata.annotations if self.obj.metadata else None)

    @property
    def paused(self) -> bool:
        return isinstance(self.obj, Deployment) and bool(self.obj.spec and self.obj.spec.paused)

    @property
    def containers(self) -> list[dict[str, Any]]:
        spec = self.obj.spec
        if spec is None or spec.template.spec is None:
            return []
        return [c.to_dict() for c in spec.template.spec.containers]

    @property
    def images(self) -> list[str]:
        return [str(c.get("image", "")) for c in self.containers]

    @property
    def state(self) -> ServiceState:
        spec = self.obj.spec
        replicas = spec.replicas if spec is not None and spec.replicas is not None else 1
        generation = (self.obj.metadata.generation if self.obj.metadata else None) or 1
        images = self.images
        return ServiceState(
            replicas=replicas, image=images[0] if images else "", revision=generation
        )


def rollout_status(obj: dict[str, Any]) -> tuple[bool, str | None, str]:  # noqa: PLR0911 - one return per kubectl rule reads as its list
    """(done, why it failed or None, progress) of a Deployment or StatefulSet's rollout.

    The rules of ``kubectl rollout status``: the controller must have observed the
    current generation; a Deployment is done when every replica is updated and available
    and no old one is left, and failed once its Progressing condition says
    ProgressDeadlineExceeded; a StatefulSet when every replica is ready and its update
    revision is current (or, with a partition, the replicas above it are updated).
    """
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    wanted = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    progress = f"{updated} of {wanted} updated"
    generation = (obj.get("metadata") or {}).get("generation", 0)
    if status.get("observedGeneration", 0) < generation or not status.get("observedGeneration"):
        return False, None, "waiting for the controller to see the change"
    if obj.get("kind") == "StatefulSet":
        strategy = spec.get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return True, None, "OnDelete: pods change when deleted"
        if status.get("readyReplicas", 0) < wanted:
            return False, None, f"{status.get('readyReplicas', 0)} of {wanted} ready"
        partition = (strategy.get("rollingUpdate") or {}).get("partition")
        if partition:
            return updated >= wanted - partition, None, progress
        return status.get("updateRevision") == status.get("currentRevision"), None, progress
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and (
            condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            message = condition.get("message") or "no message"
            return False, f"exceeded its progress deadline ({message}; {progress})", progress
    if updated < wanted:
        return False, None, progress
    if status.get("replicas", 0) > updated:
        return False, None, f"{status.get('replicas', 0) - updated} old replicas terminating"
    if status.get("availableReplicas", 0) < updated:
        return False, None, f"{status.get('availableReplicas', 0)} of {updated} available"
    return True, None, progress


def rollout_counts(obj: dict[str, Any], *, done: bool = False) -> RolloutProgress:
    """The workload's updated replicas of those it wants, as the controller reports them
    (all of them once the rollout is done; none while the controller has not seen the
    change, whose count is still the previous rollout's)."""
    wanted = int((obj.get("spec") or {}).get("replicas", 1))
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation", 0)
    seen = status.get("observedGeneration") or 0
    updated = int(status.get("updatedReplicas") or 0) if seen >= generation else 0
    return RolloutProgress(updated=wanted if done else min(updated, wanted), total=wanted)


def pending_scale(ledger: Ledger, current: ServiceState) -> tuple[str, Record] | None:
    """The newest ledger entry when it is a scale whose ``/scale`` write has not happened.

    That is: its target differs from the replicas now, which are still its starting point
    (so nobody scaled since; anything else means it was superseded, not pending).
    """
    if not ledger:
        return None
    job_id, record = next(reversed(ledger.items()))
    if (
        record.action == "scale"
        and record.status == "succeeded"
        and current.replicas == record.before.replicas
        and current.replicas != record.after.replicas
    ):
        return job_id, record
    return None


@contextlib.contextmanager
def conflict_retry() -> Iterator[None]:
    """Swallow a 409 so the surrounding loop reads again; anything else propagates."""
    try:
        yield
    except httpx2.HTTPStatusError as exc:
        if exc.response.status_code != 409:
            raise


def paused_message(names: list[str], namespace: str) -> str:
    """Why a paused Deployment is not restarted, and how to resume it."""
    listed = ", ".join(names)
    first = names[0]
    return (
        f"deployment {listed} in namespace {namespace!r} is paused, so a restart would not "
        f"roll out; nothing was changed. Resume it with: kubectl rollout resume "
        f"deployment/{first} -n {namespace}"
    )


def conflict_message(target: Target, namespace: str, attempts: int) -> str:
    """A scale that kept meeting 409 Conflict (retryable)."""
    return (
        f"service {target.service!r} in namespace {namespace!r} kept changing under "
        f"{attempts} attempts to scale it (409 Conflict); will retry"
    )


@contextlib.contextmanager
def api_errors(target: Target, namespace: str, where: str) -> Iterator[None]:
    """Map client and API errors, once for the adapter, to retryable or permanent."""
    try:
        yield
    except httpx2.HTTPStatusError as exc:
        # lightkube raises ApiError (a subclass) when the body is a Status, the plain
        # error when something in between (a proxy, a load balancer) answered.
        code = exc.response.status_code
        if isinstance(exc, ApiError):
            reason = exc.status.message or exc.status.reason or "no message"
        else:
            reason = exc.response.text[:200] or exc.response.reason_phrase
        place = f"namespace {namespace!r} of cluster {target.cluster!r} ({where})"
        if code in (401, 403):
            msg = (
                f"the Kubernetes API refused access in {place}: {reason} ({code}). Grant the "
                "worker's account get, list and patch on deployments, deployments/scale, "
                "statefulsets and statefulsets/scale in that namespace (deploy/k8s/rbac.yaml)"
            )
            raise PermanentError(msg) from None
        if code == 404:
            msg = f"not found in {place}: {reason}"
            raise NotFoundError(msg) from None
        if code == 409:
            msg = f"conflicting write in {place}: {reason}; will retry"
            raise ConflictError(msg) from None
        if code in (408, 429) or code >= 500:
            msg = f"the Kubernetes API of cluster {target.cluster!r} answered {code}: {reason}; will retry"
            raise RetryableError(msg) from None
        msg = f"the Kubernetes API rejected the change in {place}: {reason} ({code})"
        raise PermanentError(msg) from None
    except httpx2.TimeoutException:
        msg = f"the Kubernetes API of cluster {target.cluster!r} ({where}) did not answer in time; will retry"
        raise RetryableError(msg) from None
    except httpx2.TransportError as exc:
        msg = f"cannot reach the Kubernetes API of cluster {target.cluster!r} ({where}): {exc}; will retry"
        raise RetryableError(msg) from None
