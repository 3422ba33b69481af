"""The Docker Swarm orchestrator, over the Docker Engine API with aiodocker.

Mapping (see DESIGN.md): an application is a stack (services labelled
``com.docker.stack.namespace=<app>``); a service is ``<stack>_<service>``. The trigger's
cluster picks the Docker endpoint from `TRIGGERS_DOCKER_HOST` (one URL for every cluster,
or ``cluster=url,...``; default the local socket).

aiodocker lists and inspects services; its ``services.update`` can only change the image,
so updates go through its raw request with the full spec, as ``docker service update``
does. Every update carries ``?version=`` from the inspect it was computed from; a
concurrent writer makes it fail with "update out of sequence" and the adapter inspects
again (a bounded number of times). The job is recorded in a service label in that same
write, so a redelivered job finds itself there and changes nothing.

With `TRIGGERS_DOCKER_CONFIG`, each update carries ``X-Registry-Auth`` for the registry
of the image it deploys, as ``docker service update --with-registry-auth`` does, so the
nodes can pull private images (see `registry_auth`).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import aiodocker
import aiohttp

from shared.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    PermanentError,
    RetryableError,
    TriggersError,
)
from shared.messages import ServiceState, Target
from workers.orchestrators.base import Change, image_repository, redeploy_plan, scale_change
from workers.orchestrators.ledger import (
    LEDGER_KEY,
    Record,
    as_change,
    as_record,
    read_ledger,
    record_change,
)
from workers.orchestrators.registry_auth import AUTH_HEADER, RegistryAuth

__all__ = ["STACK_LABEL", "SwarmOrchestrator", "parse_docker_hosts"]

STACK_LABEL = "com.docker.stack.namespace"
_OUT_OF_SEQUENCE = "update out of sequence"


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


class _Service:
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
    def replicas(self) -> int | None:
        replicated = (self.spec.get("Mode") or {}).get("Replicated")
        return None if replicated is None else int(replicated.get("Replicas", 1))

    @property
    def image(self) -> str:
        return str(self.spec["TaskTemplate"].get("ContainerSpec", {}).get("Image", ""))

    @property
    def state(self) -> ServiceState:
        return ServiceState(
            replicas=self.replicas or 0,
            image=self.image,
            revision=int(self.spec["TaskTemplate"].get("ForceUpdate", 0)),
        )


class SwarmOrchestrator:
    """The `Orchestrator` for Docker Swarm stacks."""

    name = "swarm"

    def __init__(
        self,
        *,
        docker_host: str | None = None,
        docker_config: str | None = None,
        timeout: float = 10.0,
        conflict_retries: int = 5,
    ) -> None:
        """`docker_config` is a Docker client config file with registry credentials; a
        problem with it raises `ConfigError` here, at start."""
        self._hosts = parse_docker_hosts(docker_host)
        self._auth = RegistryAuth(docker_config) if docker_config else None
        self._timeout = timeout
        self._retries = conflict_retries
        self._clients: dict[str | None, aiodocker.Docker] = {}

    async def state(self, target: Target) -> dict[str, ServiceState]:
        """The stack's services (or the one the target names)."""
        async with self._docker(target) as docker:
            if target.service:
                service = await self._service(docker, target)
                return {service.name: service.state}
            return {n: s.state for n, s in (await self._stack(docker, target)).items()}

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
    ) -> Change:
        """Bump ``ForceUpdate`` of every service of the stack, or of the target's service
        (and set the image where it matches).

        ``ForceUpdate`` is a counter, so `issued_at` is not needed to make it idempotent.
        """
        async with self._docker(target) as docker:
            if target.service:  # a service-bound trigger redeploys that service only
                one = await self._service(docker, target)
                services = {one.name: one}
            else:
                services = await self._stack(docker, target)
            chosen, roll, detail = redeploy_plan(
                {n: [s.image] for n, s in services.items()}, target, image
            )
            records: dict[str, Record] = {}
            wrote = False
            for name in chosen:
                record, written = await self._update_once(
                    docker,
                    target,
                    name,
                    job_id=job_id,
                    image=image if roll else None,
                    delta=None,
                    note=(detail, image),
                )
                records[name] = record
                wrote = wrote or written
            return as_change(records, duplicate=not wrote)

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
        bounds, once per job."""
        if not target.service:
            msg = "a scale command must name a service"
            raise NotFoundError(msg)
        async with self._docker(target) as docker:
            record, written = await self._update_once(
                docker,
                target,
                target.service,
                job_id=job_id,
                image=None,
                delta=delta,
                bounds=(min_replicas, max_replicas),
            )
            return as_change({target.service: record}, duplicate=not written)

    async def close(self) -> None:
        """Close every Docker client."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    # -- reading ---------------------------------------------------------------------------

    async def _stack(self, docker: aiodocker.Docker, target: Target) -> dict[str, _Service]:
        found = await docker.services.list(filters={"label": f"{STACK_LABEL}={target.app}"})
        services = {s.name: s for s in (_Service(d, target.app) for d in found)}
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
    ) -> _Service:
        service_name = name or target.service
        full = f"{target.app}_{service_name}"
        try:
            service = _Service(await docker.services.inspect(full), target.app)
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

    # -- writing ---------------------------------------------------------------------------

    async def _update_once(
        self,
        docker: aiodocker.Docker,
        target: Target,
        name: str,
        *,
        job_id: str,
        image: str | None,
        delta: int | None,
        note: tuple[str | None, str | None] = (None, None),
        bounds: tuple[int | None, int | None] = (None, None),
    ) -> tuple[Record, bool]:
        """Apply a redeploy (`delta` None) or a scale to one service, once per job.

        `note` is a redeploy's (detail, requested image), kept in the ledger so a
        duplicate reports them too; `bounds` a scale's (min_replicas, max_replicas).
        """
        for _ in range(self._retries):
            service = await self._service(docker, target, name)
            ledger = read_ledger(service.labels)
            if job_id in ledger:
                return ledger[job_id], False
            spec = service.spec
            before = service.state
            if delta is None:
                template = spec["TaskTemplate"]
                template["ForceUpdate"] = before.revision + 1
                if image is not None and image_repository(service.image) == image_repository(image):
                    template.setdefault("ContainerSpec", {})["Image"] = image
                record = Record(
                    action="redeploy",
                    before=before,
                    after=ServiceState(
                        replicas=before.replicas,
                        image=template.get("ContainerSpec", {}).get("Image", ""),
                        revision=before.revision + 1,
                    ),
                    detail=note[0],
                    image=note[1],
                )
            else:
                if service.replicas is None:
                    msg = (
                        f"Swarm service {target.app}_{name} runs in global mode (one task per "
                        "node) and cannot be scaled; use a replicated service"
                    )
                    raise PermanentError(msg)
                change = scale_change(
                    name, before, delta, min_replicas=bounds[0], max_replicas=bounds[1]
                )
                record = as_record(name, change, "scale")
                spec["Mode"]["Replicated"]["Replicas"] = change.after[name].replicas
            spec["Labels"] = service.labels | {LEDGER_KEY: record_change(ledger, job_id, record)}
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
                    continue
                raise
            return record, True
        msg = (
            f"Swarm service {target.app}_{name} kept changing under {self._retries} attempts "
            "to update it (update out of sequence); will retry"
        )
        raise ConflictError(msg)

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
            raise _mapped(exc, target, where) from None
        except TimeoutError:
            msg = f"the Docker engine of cluster {target.cluster!r} ({where}) did not answer in time; will retry"
            raise RetryableError(msg) from None
        except aiohttp.ClientError as exc:
            msg = f"cannot reach the Docker engine of cluster {target.cluster!r} ({where}): {exc}; will retry"
            raise RetryableError(msg) from None
        except ValueError as exc:
            msg = f"the Docker endpoint of cluster {target.cluster!r} is unusable: {exc}"
            raise PermanentError(msg) from None


def _mapped(exc: aiodocker.DockerError, target: Target, where: str) -> Exception:  # noqa: PLR0911 - one return per error class reads as a table
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
