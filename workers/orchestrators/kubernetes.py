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
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import msgspec
from lightkube import AsyncClient, ConfigError
from lightkube.config.kubeconfig import (
    DEFAULT_KUBECONFIG,
    SERVICE_ACCOUNT,
    KubeConfig,
    SingleConfig,
)
from lightkube.types import PatchType

from shared.errors import (
    ConflictError,
    NotFoundError,
    PermanentError,
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
from workers.orchestrators.kubernetes_workloads import (
    FIELD_MANAGER,
    KINDS,
    NAME,
    PART_OF,
    RESTARTED_AT,
    Workload,
    api_errors,
    conflict_message,
    conflict_retry,
    paused_message,
    pending_scale,
    rollout_counts,
    rollout_status,
)
from workers.orchestrators.ledger import (
    LEDGER_KEY,
    Record,
    as_change,
    as_record,
    record_change,
)

__all__ = ["PART_OF", "RESTARTED_AT", "KubernetesOrchestrator"]


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
        with api_errors(target, namespace, cluster.where):
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
            with api_errors(target, namespace, cluster.where):
                workloads = await self._workloads(cluster, namespace, target)
        except TriggersError:
            return None
        records: dict[str, Record] = {}
        for name, workload in workloads.items():
            ledger = workload.ledger
            pending = pending_scale(ledger, workload.state)
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
        with api_errors(target, namespace, cluster.where):
            workloads = await self._workloads(cluster, namespace, target)
            chosen, roll, detail = redeploy_plan(
                {n: w.images for n, w in workloads.items()}, target, image
            )
            paused = [
                n for n in chosen if workloads[n].paused and job_id not in workloads[n].ledger
            ]
            if paused:
                raise PermanentError(paused_message(paused, namespace))
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
        with api_errors(target, namespace, cluster.where):
            completed = False
            for _ in range(self._retries):
                workload = await self._service(cluster, namespace, target)
                ledger = workload.ledger
                pending = pending_scale(ledger, workload.state)
                if pending is not None:
                    # Finish the recorded intent first, whoever's it is: applying anything
                    # else on top would lose its step.
                    with conflict_retry():
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
                with conflict_retry():
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
                        Workload(written),
                        change.after[workload.name].replicas,
                    )
                    return await self._with_readiness(cluster, namespace, workload, change)
            raise ConflictError(conflict_message(target, namespace, self._retries))

    async def _with_readiness(
        self, cluster: _Cluster, namespace: str, workload: Workload, change: Change
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
    ) -> dict[str, Workload]:
        """The target's service when it names one, else every workload of the application."""
        if target.service:
            workload = await self._service(cluster, namespace, target)
            return {workload.name: workload}
        return await self._application(cluster, namespace, target)

    async def _application(
        self, cluster: _Cluster, namespace: str, target: Target
    ) -> dict[str, Workload]:
        for label in (PART_OF, NAME):
            found: dict[str, Workload] = {}
            for kind in KINDS:
                async for obj in cluster.client.list(
                    kind, namespace=namespace, labels={label: target.app}
                ):
                    workload = Workload(obj)
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

    async def _service(self, cluster: _Cluster, namespace: str, target: Target) -> Workload:
        assert target.service is not None  # noqa: S101 - callers check
        for kind in KINDS:
            try:
                workload = Workload(
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
        workload: Workload,
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
                workload = Workload(
                    await cluster.client.get(workload.kind, workload.name, namespace=namespace)
                )
            ledger = workload.ledger
            if job_id in ledger:
                return ledger[job_id], False
            if workload.paused:
                raise PermanentError(paused_message([workload.name], namespace))
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
        workloads: dict[str, Workload],
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
        self, cluster: _Cluster, namespace: str, workload: Workload, replicas: int
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
