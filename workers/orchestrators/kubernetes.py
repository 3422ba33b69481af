"""The Kubernetes orchestrator, over lightkube's async client.

Mapping (see DESIGN.md): a trigger's cluster names a kubeconfig context (inside a cluster,
without a context of that name, the pod's service account); its application is every
Deployment and StatefulSet labelled ``app.kubernetes.io/part-of=<app>`` (else
``app.kubernetes.io/name=<app>``) in the trigger's namespace; a service is one of them.

Exactly-once effect: every write carries the ``resourceVersion`` it was computed from, so a
concurrent writer makes it fail with 409 and the adapter reads again (a bounded number of
times). Each job is recorded in the workload's ledger annotation (workers/orchestrators/
ledger.py) in the same write as a redeploy. A scale goes through the ``/scale``
subresource, which cannot carry annotations, so it is two preconditioned writes: the
ledger entry (the intent, with the absolute target), then ``/scale`` with the
``resourceVersion`` the first write produced, so nothing can slip in between. A job whose
intent is recorded but whose ``/scale`` did not happen (a crash, a conflict) is completed
with the same absolute target by whoever reads it next, before anything else is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import msgspec
from lightkube import ApiError, AsyncClient, ConfigError
from lightkube.config.kubeconfig import (
    DEFAULT_KUBECONFIG,
    SERVICE_ACCOUNT,
    KubeConfig,
    SingleConfig,
)
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.types import PatchType

from shared.errors import (
    ConflictError,
    NotFoundError,
    PermanentError,
    RetryableError,
    TriggersError,
)
from shared.messages import RolloutProgress, ServiceState, Target
from shared.settings import Settings
from workers.orchestrators.base import (
    Change,
    ProgressReport,
    image_repository,
    redeploy_plan,
    scale_change,
)
from workers.orchestrators.ledger import (
    LEDGER_KEY,
    Ledger,
    Record,
    as_change,
    as_record,
    read_ledger,
    record_change,
)

__all__ = [
    "PART_OF",
    "RESTARTED_AT",
    "KubernetesOrchestrator",
    "rollout_counts",
    "rollout_status",
]

PART_OF = "app.kubernetes.io/part-of"
NAME = "app.kubernetes.io/name"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
FIELD_MANAGER = "container-triggers"

Kind = type[Deployment] | type[StatefulSet]
_KINDS: tuple[Kind, ...] = (Deployment, StatefulSet)


@dataclass(frozen=True)
class _Workload:
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


@dataclass(frozen=True)
class _Cluster:
    client: AsyncClient
    namespace: str
    where: str  # "context prod" or "in-cluster", for messages


class KubernetesOrchestrator:
    """The `Orchestrator` for Kubernetes clusters named by kubeconfig contexts."""

    name = "kubernetes"

    def __init__(
        self,
        *,
        kubeconfig: str | None = None,
        timeout: float = Settings.orchestrator_timeout,
        conflict_retries: int = 5,
        service_account: str = SERVICE_ACCOUNT,
        rollout_timeout: float = Settings.rollout_timeout,
        poll_interval: float = 1.0,
    ) -> None:
        self._kubeconfig = kubeconfig
        self._timeout = timeout
        self._retries = conflict_retries
        self._rollout_timeout = rollout_timeout
        self._poll = poll_interval
        self._service_account = service_account
        self._clusters: dict[str, _Cluster] = {}

    # -- the Orchestrator protocol ------------------------------------------------------

    async def state(self, target: Target) -> dict[str, ServiceState]:
        """The target's workloads (all of the application's when no service is named)."""
        cluster = self._cluster(target.cluster)
        namespace = target.namespace or cluster.namespace
        with _api_errors(target, namespace, cluster.where):
            workloads = await self._workloads(cluster, namespace, target)
            return {name: w.state for name, w in workloads.items()}

    async def recorded(self, job_id: str, target: Target) -> Change | None:
        """The job's change, from the ledgers of the target's workloads, if it was applied.

        None when nothing records it, or when the API cannot be read (then nobody can
        tell, and the caller reports the failure it has).
        """
        try:
            cluster = self._cluster(target.cluster)
            namespace = target.namespace or cluster.namespace
            with _api_errors(target, namespace, cluster.where):
                workloads = await self._workloads(cluster, namespace, target)
        except TriggersError:
            return None
        records: dict[str, Record] = {}
        for name, workload in workloads.items():
            ledger = workload.ledger
            pending = _pending_scale(ledger, workload.state)
            if job_id in ledger and (pending is None or pending[0] != job_id):
                records[name] = ledger[job_id]
        return as_change(records, duplicate=True) if records else None

    async def redeploy(
        self,
        job_id: str,
        target: Target,
        *,
        image: str | None = None,
        issued_at: datetime | None = None,
        progress: ProgressReport | None = None,
    ) -> Change:
        """What ``kubectl rollout restart`` does, stamped with the command's time, on the
        application's workloads (or the one a service-bound trigger names); then waits
        for the rollout, telling `progress` the updated replicas on every poll."""
        cluster = self._cluster(target.cluster)
        namespace = target.namespace or cluster.namespace
        stamp = issued_at.isoformat() if issued_at is not None else job_id
        with _api_errors(target, namespace, cluster.where):
            workloads = await self._workloads(cluster, namespace, target)
            chosen, roll, detail = redeploy_plan(
                {n: w.images for n, w in workloads.items()}, target, image
            )
            paused = [
                n for n in chosen if workloads[n].paused and job_id not in workloads[n].ledger
            ]
            if paused:
                raise PermanentError(_paused_message(paused, namespace))
            records: dict[str, Record] = {}
            written: list[str] = []
            for name in chosen:
                record, wrote = await self._restart(
                    cluster,
                    namespace,
                    workloads[name],
                    job_id=job_id,
                    stamp=stamp,
                    image=image if roll else None,
                    note=(detail, image),
                )
                records[name] = record
                if wrote:
                    written.append(name)
            change = as_change(records, duplicate=not written)
            if not written:
                return change
            return await self._rolled_out(
                cluster, namespace, workloads, written, change, report=progress
            )

    async def scale(
        self,
        job_id: str,
        target: Target,
        *,
        delta: int,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
    ) -> Change:
        """Set ``/scale`` to the current replicas plus `delta` within the bounds, once per job."""
        if not target.service:
            msg = "a scale command must name a service"
            raise NotFoundError(msg)
        cluster = self._cluster(target.cluster)
        namespace = target.namespace or cluster.namespace
        with _api_errors(target, namespace, cluster.where):
            completed = False
            for _ in range(self._retries):
                workload = await self._service(cluster, namespace, target)
                ledger = workload.ledger
                pending = _pending_scale(ledger, workload.state)
                if pending is not None:
                    # Finish the recorded intent first, whoever's it is: applying anything
                    # else on top would lose its step.
                    with _conflict_retry():
                        await self._patch_scale(
                            cluster, namespace, workload, pending[1].after.replicas
                        )
                        completed = completed or pending[0] == job_id
                    continue
                if job_id in ledger:
                    return as_change({workload.name: ledger[job_id]}, duplicate=not completed)
                change = scale_change(
                    workload.name,
                    workload.state,
                    delta,
                    revision_step=1,
                    min_replicas=min_replicas,
                    max_replicas=max_replicas,
                )
                value = record_change(ledger, job_id, as_record(workload.name, change, "scale"))
                with _conflict_retry():
                    written = await cluster.client.patch(
                        workload.kind,
                        workload.name,
                        {
                            "metadata": {
                                "resourceVersion": workload.resource_version,
                                "annotations": {LEDGER_KEY: value},
                            }
                        },
                        namespace=namespace,
                        patch_type=PatchType.MERGE,
                    )
                    if change.status == "skipped":
                        return change
                    completed = True
                    await self._patch_scale(
                        cluster,
                        namespace,
                        _Workload(written),
                        change.after[workload.name].replicas,
                    )
                    return await self._with_readiness(cluster, namespace, workload, change)
            raise ConflictError(_conflict_message(target, namespace, self._retries))

    async def _with_readiness(
        self, cluster: _Cluster, namespace: str, workload: _Workload, change: Change
    ) -> Change:
        """Say whether the replicas asked for are ready yet, as the controller reports now.

        The scale itself succeeded once written; a caller learns whether the new pods run
        or were only requested (an image pull, a pending pod) without waiting for them.
        """
        wanted = change.after[workload.name].replicas
        read = await cluster.client.get(workload.kind, workload.name, namespace=namespace)
        ready = (read.status.readyReplicas if read.status else None) or 0
        note = (
            f"{wanted} replicas ready"
            if ready >= wanted
            else f"{wanted} replicas requested, {ready} ready so far"
        )
        detail = f"{change.detail}; {note}" if change.detail else note
        return msgspec.structs.replace(change, detail=detail)

    async def close(self) -> None:
        """Close every cluster's HTTP client."""
        clusters, self._clusters = list(self._clusters.values()), {}
        for cluster in clusters:
            await cluster.client.close()

    # -- reading ---------------------------------------------------------------------------

    async def _workloads(
        self, cluster: _Cluster, namespace: str, target: Target
    ) -> dict[str, _Workload]:
        """The target's service when it names one, else every workload of the application."""
        if target.service:
            workload = await self._service(cluster, namespace, target)
            return {workload.name: workload}
        return await self._application(cluster, namespace, target)

    async def _application(
        self, cluster: _Cluster, namespace: str, target: Target
    ) -> dict[str, _Workload]:
        for label in (PART_OF, NAME):
            found: dict[str, _Workload] = {}
            for kind in _KINDS:
                async for obj in cluster.client.list(
                    kind, namespace=namespace, labels={label: target.app}
                ):
                    workload = _Workload(obj)
                    found[workload.name] = workload
            if found:
                return dict(sorted(found.items()))
        msg = (
            f"application {target.app!r} not found in namespace {namespace!r} of cluster "
            f"{target.cluster!r}: no Deployment or StatefulSet is labelled {PART_OF}={target.app}"
            f" (or {NAME}={target.app}); label its workloads with: kubectl label deployment NAME"
            f" -n {namespace} {PART_OF}={target.app}"
        )
        raise NotFoundError(msg)

    async def _service(self, cluster: _Cluster, namespace: str, target: Target) -> _Workload:
        assert target.service is not None  # noqa: S101 - callers check
        for kind in _KINDS:
            try:
                workload = _Workload(
                    await cluster.client.get(kind, target.service, namespace=namespace)
                )
            except httpx2.HTTPStatusError as exc:
                if exc.response.status_code == 404:
                    continue
                raise
            if target.app not in (workload.labels.get(PART_OF), workload.labels.get(NAME)):
                msg = (
                    f"{workload.kind_name} {target.service!r} in namespace {namespace!r} is not "
                    f"part of application {target.app!r}: label it with {PART_OF}={target.app}"
                )
                raise NotFoundError(msg)
            return workload
        msg = (
            f"service {target.service!r} of application {target.app!r} not found: no "
            f"Deployment or StatefulSet of that name in namespace {namespace!r} of cluster "
            f"{target.cluster!r}"
        )
        raise NotFoundError(msg)

    # -- writing ---------------------------------------------------------------------------

    async def _restart(
        self,
        cluster: _Cluster,
        namespace: str,
        workload: _Workload,
        *,
        job_id: str,
        stamp: str,
        image: str | None,
        note: tuple[str | None, str | None],
    ) -> tuple[Record, bool]:
        """Restart one workload once per job; the record and whether this call wrote it.

        `image` is set on the containers running its repository; `note` is the job's
        (detail, requested image), kept in the ledger so a duplicate reports them too.
        """
        for attempt in range(self._retries):
            if attempt:
                workload = _Workload(
                    await cluster.client.get(workload.kind, workload.name, namespace=namespace)
                )
            ledger = workload.ledger
            if job_id in ledger:
                return ledger[job_id], False
            if workload.paused:
                raise PermanentError(_paused_message([workload.name], namespace))
            template: dict[str, Any] = {"metadata": {"annotations": {RESTARTED_AT: stamp}}}
            before = workload.state
            after_image = before.image
            if image is not None:
                repository = image_repository(image)
                containers = [
                    {**c, "image": image}
                    if image_repository(str(c.get("image", ""))) == repository
                    else c
                    for c in workload.containers
                ]
                # A merge patch replaces the whole list; the resourceVersion precondition
                # guarantees it is the list this was computed from.
                template["spec"] = {"containers": containers}
                after_image = str(containers[0].get("image", "")) if containers else ""
            record = Record(
                action="redeploy",
                before=before,
                after=msgspec.structs.replace(
                    before, image=after_image, revision=before.revision + 1
                ),
                detail=note[0],
                image=note[1],
            )
            body = {
                "metadata": {
                    "resourceVersion": workload.resource_version,
                    "annotations": {LEDGER_KEY: record_change(ledger, job_id, record)},
                },
                "spec": {"template": template},
            }
            try:
                await cluster.client.patch(
                    workload.kind,
                    workload.name,
                    body,
                    namespace=namespace,
                    patch_type=PatchType.MERGE,
                )
            except httpx2.HTTPStatusError as exc:
                if exc.response.status_code == 409:
                    continue
                raise
            return record, True
        msg = (
            f"{workload.kind_name} {workload.name!r} in namespace {namespace!r} kept changing "
            f"under {self._retries} attempts to restart it; will retry"
        )
        raise ConflictError(msg)

    async def _rolled_out(
        self,
        cluster: _Cluster,
        namespace: str,
        workloads: dict[str, _Workload],
        names: list[str],
        change: Change,
        *,
        report: ProgressReport | None = None,
    ) -> Change:
        """`change` once every restarted workload finished rolling out, as ``kubectl
        rollout status`` judges it; failed when a Deployment exceeded its progress
        deadline, or when the rollout is still going after the rollout timeout."""
        deadline = time.monotonic() + self._rollout_timeout
        pending = list(names)
        problems: list[str] = []
        progress: dict[str, str] = {}
        counts: dict[str, RolloutProgress] = {}
        while pending:
            for name in list(pending):
                workload = workloads[name]
                obj = (await cluster.client.get(workload.kind, name, namespace=namespace)).to_dict()
                done, failure, progress[name] = rollout_status(obj)
                counts[name] = rollout_counts(obj, done=done)
                if failure is not None:
                    problems.append(f"{workload.kind_name} {name}: {failure}")
                if done or failure is not None:
                    pending.remove(name)
            if report is not None:
                await report(dict(counts))
            if not pending:
                break
            if time.monotonic() >= deadline:
                problems.extend(
                    f"{workloads[n].kind_name} {n}: rollout not finished after "
                    f"{self._rollout_timeout:g} s ({progress[n]})"
                    for n in pending
                )
                break
            await asyncio.sleep(self._poll)
        if not problems:
            return change
        return msgspec.structs.replace(
            change, status="failed", error="rollout failed: " + "; ".join(problems)
        )

    async def _patch_scale(
        self, cluster: _Cluster, namespace: str, workload: _Workload, replicas: int
    ) -> None:
        await cluster.client.patch(
            workload.kind.Scale,
            workload.name,
            {
                "metadata": {"resourceVersion": workload.resource_version},
                "spec": {"replicas": replicas},
            },
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )

    # -- configuration ---------------------------------------------------------------------

    def _cluster(self, name: str) -> _Cluster:
        if (cluster := self._clusters.get(name)) is not None:
            return cluster
        config, where = self._config(name)
        client = AsyncClient(
            config, timeout=httpx2.Timeout(self._timeout), field_manager=FIELD_MANAGER
        )
        cluster = _Cluster(client=client, namespace=config.namespace, where=where)
        self._clusters[name] = cluster
        return cluster

    def _config(self, name: str) -> tuple[SingleConfig, str]:
        """The kubeconfig context called `name`, else the in-cluster service account."""
        spec = self._kubeconfig or os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG
        paths = [Path(p).expanduser() for p in spec.split(os.pathsep) if p]
        seen: list[str] = []
        for path in paths:
            if not path.is_file():
                continue
            try:
                kubeconfig = KubeConfig.from_file(path)
                if name in kubeconfig.contexts:
                    config = kubeconfig.get(name)
                    assert config is not None  # noqa: S101 - get() of an existing context
                    return config, f"kubeconfig context {name!r}"
            except (ConfigError, KeyError, TypeError, ValueError) as exc:
                msg = f"kubeconfig {path} is unusable for context {name!r}: {exc}"
                raise PermanentError(msg) from None
            seen.extend(kubeconfig.contexts)
        if os.environ.get("KUBERNETES_SERVICE_HOST") and Path(self._service_account).is_dir():
            try:
                config = KubeConfig.from_service_account(self._service_account).get()
            except ConfigError as exc:
                msg = f"in-cluster configuration is unusable: {exc}"
                raise PermanentError(msg) from None
            assert config is not None  # noqa: S101 - from_one() sets the current context
            return config, "in-cluster"
        msg = (
            f"no kubeconfig context named {name!r} (looked in {spec}; contexts: "
            f"{', '.join(sorted(seen)) or 'none'}) and not running inside a cluster: a trigger's"
            " cluster must be the name of a kubeconfig context (kubectl config get-contexts)"
        )
        raise PermanentError(msg)


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


def _pending_scale(ledger: Ledger, current: ServiceState) -> tuple[str, Record] | None:
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
def _conflict_retry() -> Iterator[None]:
    """Swallow a 409 so the surrounding loop reads again; anything else propagates."""
    try:
        yield
    except httpx2.HTTPStatusError as exc:
        if exc.response.status_code != 409:
            raise


def _paused_message(names: list[str], namespace: str) -> str:
    listed = ", ".join(names)
    first = names[0]
    return (
        f"deployment {listed} in namespace {namespace!r} is paused, so a restart would not "
        f"roll out; nothing was changed. Resume it with: kubectl rollout resume "
        f"deployment/{first} -n {namespace}"
    )


def _conflict_message(target: Target, namespace: str, attempts: int) -> str:
    return (
        f"service {target.service!r} in namespace {namespace!r} kept changing under "
        f"{attempts} attempts to scale it (409 Conflict); will retry"
    )


@contextlib.contextmanager
def _api_errors(target: Target, namespace: str, where: str) -> Iterator[None]:
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
