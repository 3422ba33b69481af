"""The Docker Swarm orchestrator, over the Docker Engine API with aiodocker.

Mapping (see DESIGN.md): an application is a stack (services labelled
``com.docker.stack.namespace=<app>``); a service is ``<stack>_<service>``. The trigger's
cluster picks the Docker endpoint from `TRIGGERS_DOCKER_HOST` (one URL for every cluster,
or ``cluster=url,...``; default the local socket).

aiodocker lists and inspects services; its ``services.update`` can only change the image,
so updates go through its raw request with the full spec, as ``docker service update``
does. Every update carries ``?version=`` from the inspect it was computed from; a
concurrent writer makes it fail with "update out of sequence" and the adapter inspects
again after a jittered backoff (a bounded number of times). The job is recorded in a
service label in that same write, so a redelivered job finds itself there and changes
nothing (the worker also keeps a durable record: workers/applied.py).

Within one adapter, writes to one service never race: they hold that service's lock, and
scale jobs waiting for it are coalesced into one read-modify-write that applies each
job's step in turn (each within its own bounds, each recorded in the ledger).

A redeploy is ``succeeded`` only once Swarm reports its rolling update ``completed``;
paused or rolled back (``UpdateStatus``) it is ``failed`` with Swarm's reason, and so is a
rollout still going after the rollout timeout. Job-mode services (``replicated-job``,
``global-job``) are not restarted by an application redeploy: that would run a one-off
task (a migration) again; a redeploy naming the service does.

With `TRIGGERS_DOCKER_CONFIG`, each update carries ``X-Registry-Auth`` for the registry
of the image it deploys, as ``docker service update --with-registry-auth`` does, so the
nodes can pull private images (see `registry_auth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiodocker
import aiohttp
import msgspec

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
    LEDGER_SIZE,
    Record,
    as_change,
    as_record,
    read_ledger,
    record_change,
)
from workers.orchestrators.registry_auth import AUTH_HEADER, RegistryAuth
from workers.orchestrators.swarm_services import (
    Service,
    mapped_error,
    parse_docker_hosts,
    rollout_outcome,
)

__all__ = ["STACK_LABEL", "SwarmOrchestrator", "parse_docker_hosts"]

STACK_LABEL = "com.docker.stack.namespace"
_OUT_OF_SEQUENCE = "update out of sequence"


@dataclass
class _ScaleJob:
    """A scale job waiting for its service's next write."""

    job_id: str
    delta: int
    bounds: tuple[int | None, int | None]
    done: asyncio.Future[tuple[Record, bool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SwarmOrchestrator:
    """The `Orchestrator` for Docker Swarm stacks."""

    name = "swarm"

    def __init__(
        self,
        *,
        docker_host: str | None = None,
        docker_config: str | None = None,
        timeout: float = Settings.orchestrator_timeout,
        conflict_retries: int = 5,
        rollout_timeout: float = Settings.rollout_timeout,
        poll_interval: float = 0.5,
        backoff: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        """`docker_config` is a Docker client config file with registry credentials; a
        problem with it raises `ConfigError` here, at start. `backoff` is the (first,
        largest) wait before inspecting again after "update out of sequence"."""
        self._hosts = parse_docker_hosts(docker_host)
        self._auth = RegistryAuth(docker_config) if docker_config else None
        self._timeout = timeout
        self._retries = conflict_retries
        self._rollout_timeout = rollout_timeout
        self._poll = poll_interval
        self._backoff = backoff
        self._clients: dict[str | None, aiodocker.Docker] = {}
        # Per service (endpoint, full name): its write lock, and the scale jobs waiting.
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}
        self._waiting: dict[tuple[int, str], list[_ScaleJob]] = {}

    async def state(self, target: Target) -> dict[str, ServiceState]:
        """The stack's services (or the one the target names)."""
        async with self._docker(target) as docker:
            if target.service:
                service = await self._service(docker, target)
                return {service.name: await self._counted(docker, service)}
            services = await self._stack(docker, target)
            return {n: await self._counted(docker, s) for n, s in services.items()}

    async def recorded(self, job_id: str, target: Target) -> Change | None:
        """The job's change, from the ledger labels of the target's services, if applied.

        None when nothing records it, or when the engine cannot be read.
        """
        try:
            async with self._docker(target) as docker:
                if target.service:
                    found = await self._service(docker, target)
                    services = {found.name: found}
                else:
                    services = await self._stack(docker, target)
        except TriggersError:
            return None
        records = {
            name: ledger[job_id]
            for name, service in services.items()
            if job_id in (ledger := read_ledger(service.labels))
        }
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
        """Force an update of every service of the stack, or of the target's service (and
        set the image where it matches), then wait for Swarm to finish rolling it out,
        telling `progress` how many tasks run the new spec on every poll.

        ``ForceUpdate`` is a counter, so `issued_at` is not needed to make it idempotent.
        Job-mode services are left alone unless the target names one.
        """
        async with self._docker(target) as docker:
            if target.service:  # a service-bound trigger redeploys that service only
                one = await self._service(docker, target)
                services = {one.name: one}
            else:
                services = await self._stack(docker, target)
            # A one-off job (a migration) runs again only when the trigger names it.
            jobs = sorted(n for n, s in services.items() if s.is_job and n != target.service)
            runnable = {n: s for n, s in services.items() if n not in jobs}
            chosen, roll, detail = redeploy_plan(
                {n: [s.image] for n, s in runnable.items()}, target, image
            )
            if jobs:
                note = f"job-mode services not re-run: {', '.join(jobs)}"
                detail = f"{detail}; {note}" if detail else note
            records: dict[str, Record] = {}
            written: dict[str, str] = {}  # service: its UpdatedAt before our write
            for name in chosen:
                async with self._lock(docker, target, name):
                    record, baseline = await self._redeploy_once(
                        docker, target, name, job_id=job_id, image=image if roll else None,
                        note=(detail, image),
                    )  # fmt: skip
                records[name] = record
                if baseline is not None and not services[name].is_job:
                    written[name] = baseline
            change = as_change(records, duplicate=not written)
            if not written:
                return change
            return await self._rolled_out(docker, target, written, change, progress=progress)

    async def scale(
        self,
        job_id: str,
        target: Target,
        *,
        delta: int,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
    ) -> Change:
        """Set ``Mode.Replicated.Replicas`` to the current count plus `delta` within the
        bounds, once per job; jobs waiting for the same service share one write."""
        if not target.service:
            msg = "a scale command must name a service"
            raise NotFoundError(msg)
        async with self._docker(target) as docker:
            key = self._key(docker, target, target.service)
            job = _ScaleJob(job_id, delta, (min_replicas, max_replicas))
            self._waiting.setdefault(key, []).append(job)
            async with self._lock(docker, target, target.service):
                if not job.done.done():
                    batch = self._waiting[key][:LEDGER_SIZE]
                    del self._waiting[key][: len(batch)]
                    try:
                        await self._scale_batch(docker, target, batch)
                    except asyncio.CancelledError:
                        # This task is going away (a shutdown); the others still wait,
                        # so their jobs go back for the next holder of the lock.
                        self._waiting[key][:0] = [j for j in batch if not j.done.done()]
                        raise
                    except Exception as exc:
                        for waiting in batch:
                            if waiting is not job and not waiting.done.done():
                                waiting.done.set_exception(exc)
                        raise
            record, written = await job.done
            change = as_change({target.service: record}, duplicate=not written)
            if written and change.status == "succeeded":
                running = await self._running_tasks(docker, target, target.service)
                wanted = change.after[target.service].replicas
                note = (
                    f"{wanted} replicas running"
                    if running >= wanted
                    else f"{wanted} replicas requested, {running} running so far"
                )
                change = msgspec.structs.replace(
                    change, detail=f"{change.detail}; {note}" if change.detail else note
                )
            return change

    async def close(self) -> None:
        """Close every Docker client."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    # -- reading ---------------------------------------------------------------------------

    async def _stack(self, docker: aiodocker.Docker, target: Target) -> dict[str, Service]:
        found = await docker.services.list(filters={"label": f"{STACK_LABEL}={target.app}"})
        services = {s.name: s for s in (Service(d, target.app) for d in found)}
        if not services:
            msg = (
                f"stack {target.app!r} not found on the Docker endpoint of cluster "
                f"{target.cluster!r}: no service is labelled {STACK_LABEL}={target.app} "
                f"(deploy it with: docker stack deploy -c compose.yaml {target.app})"
            )
            raise NotFoundError(msg)
        return dict(sorted(services.items()))

    async def _service(
        self, docker: aiodocker.Docker, target: Target, name: str | None = None
    ) -> Service:
        service_name = name or target.service
        full = f"{target.app}_{service_name}"
        try:
            service = Service(await docker.services.inspect(full), target.app)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise
            msg = (
                f"service {service_name!r} of stack {target.app!r} not found: no Swarm service "
                f"{full!r} on the Docker endpoint of cluster {target.cluster!r}"
            )
            raise NotFoundError(msg) from None
        if service.labels.get(STACK_LABEL) != target.app:
            msg = f"Swarm service {full!r} is not part of stack {target.app!r}"
            raise NotFoundError(msg)
        return service

    async def _tasks(self, docker: aiodocker.Docker, service_id: str) -> list[Mapping[str, Any]]:
        return await docker.tasks.list(filters={"service": service_id})

    async def _counted(self, docker: aiodocker.Docker, service: Service) -> ServiceState:
        """The service's state; a global or global-job service counts its tasks."""
        state = service.state
        if service.mode in ("global", "global-job"):
            tasks = await self._tasks(docker, service.id)
            live = sum(1 for t in tasks if t.get("DesiredState") in ("running", "complete"))
            state = msgspec.structs.replace(state, replicas=live)
        return state

    async def _running_tasks(self, docker: aiodocker.Docker, target: Target, name: str) -> int:
        service = await self._service(docker, target, name)
        tasks = await self._tasks(docker, service.id)
        return sum(
            1
            for t in tasks
            if t.get("DesiredState") == "running"
            and (t.get("Status") or {}).get("State") == "running"
        )

    # -- writing ---------------------------------------------------------------------------

    def _key(self, docker: aiodocker.Docker, target: Target, name: str) -> tuple[int, str]:
        # One client per endpoint (see _docker), so the client stands for the endpoint.
        return (id(docker), f"{target.app}_{name}")

    def _lock(self, docker: aiodocker.Docker, target: Target, name: str) -> asyncio.Lock:
        """The lock every write to this service takes, so writes in this worker never race."""
        return self._locks.setdefault(self._key(docker, target, name), asyncio.Lock())

    async def _write(
        self, docker: aiodocker.Docker, service: Service, spec: Mapping[str, Any]
    ) -> bool:
        """Send the updated spec; False when the service changed since it was inspected."""
        try:
            await docker._query_json(
                f"services/{service.id}/update",
                method="POST",
                params={"version": str(service.version)},
                data=json.dumps(spec),
                headers=self._auth_headers(spec),
            )
        except aiodocker.DockerError as exc:
            if _OUT_OF_SEQUENCE in str(exc.message):
                return False
            raise
        return True

    async def _after_conflict(self, attempt: int) -> None:
        """Full jitter: a random wait up to a doubling cap, so racing writers spread out."""
        first, largest = self._backoff
        await asyncio.sleep(random.uniform(0, min(largest, first * 2**attempt)))  # noqa: S311 - jitter, not a secret

    def _kept_changing(self, target: Target, name: str) -> ConflictError:
        msg = (
            f"Swarm service {target.app}_{name} kept changing under {self._retries} attempts "
            "to update it (update out of sequence); will retry"
        )
        return ConflictError(msg)

    async def _redeploy_once(
        self,
        docker: aiodocker.Docker,
        target: Target,
        name: str,
        *,
        job_id: str,
        image: str | None,
        note: tuple[str | None, str | None],
    ) -> tuple[Record, str | None]:
        """Force an update of one service once per job; the record, and when it wrote,
        the service's ``UpdatedAt`` before the write (None when the ledger had the job).

        The new ``ForceUpdate`` is above the service's version index, which only grows, so
        the revision never goes back even after a rollback restored an older value.
        `note` is the job's (detail, requested image), kept so a duplicate reports them too.
        """
        for attempt in range(self._retries):
            if attempt:
                await self._after_conflict(attempt)
            service = await self._service(docker, target, name)
            ledger = read_ledger(service.labels)
            if job_id in ledger:
                return ledger[job_id], None
            spec = service.spec
            before = service.state
            template = spec["TaskTemplate"]
            revision = max(before.revision, service.version) + 1
            template["ForceUpdate"] = revision
            if image is not None and image_repository(service.image) == image_repository(image):
                template.setdefault("ContainerSpec", {})["Image"] = image
            record = Record(
                action="redeploy",
                before=before,
                after=ServiceState(
                    replicas=before.replicas,
                    image=template.get("ContainerSpec", {}).get("Image", ""),
                    revision=revision,
                ),
                detail=note[0],
                image=note[1],
            )
            spec["Labels"] = service.labels | {LEDGER_KEY: record_change(ledger, job_id, record)}
            if await self._write(docker, service, spec):
                return record, str(service.data.get("UpdatedAt") or "")
        raise self._kept_changing(target, name)

    async def _scale_batch(
        self, docker: aiodocker.Docker, target: Target, batch: list[_ScaleJob]
    ) -> None:
        """Apply the waiting scale jobs of one service in one write, in arrival order.

        Each job's step applies to the count the previous one left, within its own
        bounds, and each is recorded; jobs already in the ledger are answered from it.
        """
        assert target.service is not None  # noqa: S101 - scale() checks
        name = target.service
        for attempt in range(self._retries):
            if attempt:
                await self._after_conflict(attempt)
            service = await self._service(docker, target, name)
            if service.mode != "replicated":
                msg = (
                    f"Swarm service {target.app}_{name} runs in {service.mode} mode and cannot "
                    "be scaled; only replicated services have a replica count"
                )
                raise PermanentError(msg)
            ledger = read_ledger(service.labels)
            outcomes: list[tuple[Record, bool]] = []
            state = service.state
            value = None
            for job in batch:
                if job.job_id in ledger:
                    outcomes.append((ledger[job.job_id], False))
                    continue
                change = scale_change(
                    name, state, job.delta, min_replicas=job.bounds[0], max_replicas=job.bounds[1]
                )
                record = as_record(name, change, "scale")
                value = record_change(ledger, job.job_id, record)
                ledger = read_ledger({LEDGER_KEY: value})
                state = change.after[name]
                outcomes.append((record, True))
            if value is None:  # every job was applied already: nothing to write
                break
            spec = service.spec
            spec["Mode"]["Replicated"]["Replicas"] = state.replicas
            spec["Labels"] = service.labels | {LEDGER_KEY: value}
            if await self._write(docker, service, spec):
                break
        else:
            raise self._kept_changing(target, name)
        for job, outcome in zip(batch, outcomes, strict=True):
            job.done.set_result(outcome)

    async def _rolled_out(
        self,
        docker: aiodocker.Docker,
        target: Target,
        written: dict[str, str],
        change: Change,
        *,
        progress: ProgressReport | None = None,
    ) -> Change:
        """`change` once Swarm finished rolling it out on the `written` services; failed
        when it paused, rolled back, or is still going after the rollout timeout."""
        deadline = time.monotonic() + self._rollout_timeout
        pending = list(written)
        problems: list[str] = []
        counts: dict[str, RolloutProgress] = {}
        while pending:
            for name in list(pending):
                service = await self._service(docker, target, name)
                outcome = rollout_outcome(service, written[name])
                if progress is not None:
                    # Advisory: a task list that cannot be read now leaves the last count.
                    with contextlib.suppress(
                        aiodocker.DockerError, aiohttp.ClientError, TimeoutError
                    ):
                        counts[name] = await self._updated_tasks(
                            docker, service, change.after[name].revision, done=outcome == ""
                        )
                if outcome is None:
                    continue
                pending.remove(name)
                if outcome:
                    problems.append(f"{target.app}_{name}: {outcome}")
            if progress is not None and counts:
                await progress(dict(counts))
            if not pending:
                break
            if time.monotonic() >= deadline:
                for name in pending:
                    service = await self._service(docker, target, name)
                    status = (service.data.get("UpdateStatus") or {}).get("Message") or "updating"
                    problems.append(
                        f"{target.app}_{name}: rollout not finished after "
                        f"{self._rollout_timeout:g} s ({status})"
                    )
                break
            await asyncio.sleep(self._poll)
        if not problems:
            return change
        return msgspec.structs.replace(
            change, status="failed", error="rollout failed: " + "; ".join(problems)
        )

    async def _updated_tasks(
        self, docker: aiodocker.Docker, service: Service, revision: int, *, done: bool
    ) -> RolloutProgress:
        """How many of the service's tasks run the spec of `revision` (its ``ForceUpdate``),
        of the replicas it wants (a global service: of its tasks meant to run)."""
        tasks = [
            t for t in await self._tasks(docker, service.id) if t.get("DesiredState") == "running"
        ]
        total = service.replicas if service.mode == "replicated" else None
        if total is None:
            total = len(tasks)
        updated = sum(
            1
            for t in tasks
            if (t.get("Status") or {}).get("State") == "running"
            and int((t.get("Spec") or {}).get("ForceUpdate", 0)) == revision
        )
        # Completed is completed, whatever the task list says a moment later.
        return RolloutProgress(updated=total if done else min(updated, total), total=total)

    def _auth_headers(self, spec: Mapping[str, Any]) -> dict[str, str]:
        """``X-Registry-Auth`` for the image the spec deploys (the new one, or the current).

        Without it the manager keeps the credentials the service already has.
        """
        image = spec["TaskTemplate"].get("ContainerSpec", {}).get("Image", "")
        header = self._auth.header(image) if self._auth is not None and image else None
        return {AUTH_HEADER: header} if header else {}

    # -- configuration and errors ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _docker(self, target: Target) -> AsyncIterator[aiodocker.Docker]:
        """The cluster's Docker client; maps its errors, once, to retryable or permanent."""
        if target.cluster in self._hosts:
            url = self._hosts[target.cluster]
        elif "*" in self._hosts:
            url = self._hosts["*"]
        else:
            msg = (
                f"no Docker endpoint for cluster {target.cluster!r} in TRIGGERS_DOCKER_HOST "
                f"(clusters: {', '.join(sorted(self._hosts))})"
            )
            raise PermanentError(msg)
        where = url or "the local Docker socket"
        try:
            if (client := self._clients.get(url)) is None:
                client = aiodocker.Docker(
                    url=url, timeout=aiohttp.ClientTimeout(total=self._timeout)
                )
                self._clients[url] = client
            yield client
        except aiodocker.DockerError as exc:
            raise mapped_error(exc, target, where) from None
        except TimeoutError:
            msg = f"the Docker engine of cluster {target.cluster!r} ({where}) did not answer in time; will retry"
            raise RetryableError(msg) from None
        except aiohttp.ClientError as exc:
            msg = f"cannot reach the Docker engine of cluster {target.cluster!r} ({where}): {exc}; will retry"
            raise RetryableError(msg) from None
        except ValueError as exc:
            msg = f"the Docker endpoint of cluster {target.cluster!r} is unusable: {exc}"
            raise PermanentError(msg) from None
