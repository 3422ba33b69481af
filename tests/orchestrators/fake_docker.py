"""A wire-level fake of the Docker Engine API for Swarm services.

It serves ``/version`` and the versioned ``/v1.NN/services`` paths with the Engine's JSON
shapes, filters by label, and enforces ``?version=`` on ``POST /services/ID/update`` the
way a Swarm manager does: a stale version answers 500 "update out of sequence". It can be
told to answer an error or hang for the next requests. It records the ``X-Registry-Auth``
of each update, decoded, and like the Engine answers 400 when it is not base64url JSON.
An update of the task template gets an ``UpdateStatus`` at once, in the state `rollout`
says (``completed`` unless a test wants a rollback, a pause, or a rollout that never ends);
``/tasks`` lists one running task per replica, with the spec it runs. ``rolling`` replaces
one task at a time: ``updating`` after the write, and every listing of the service's
tasks moves one more task to the new spec after answering, then the update is
``completed``, so a poller sees each count in turn whatever its timing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import itertools
import json
import re
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.orchestrators.faults import Fault, FaultPlan
from tests.orchestrators.serving import serving

__all__ = ["API_VERSION", "FakeDocker", "running_fake_docker"]

API_VERSION = "1.45"
STACK = "com.docker.stack.namespace"


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"message": message}, status=status)


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def _registry_auth(header: str) -> dict[str, Any] | None:
    """The decoded AuthConfig, as the Engine's DecodeAuthConfig reads it (padded base64url,
    the empty string meaning no credentials); None if invalid."""
    if not header:
        return {}
    if not _BASE64URL.fullmatch(header) or len(header) % 4:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header))
    except (binascii.Error, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None


@dataclass
class FakeDocker:
    """The services, the request log and the fault plan of one fake engine."""

    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    faults: FaultPlan = field(default_factory=FaultPlan)
    out_of_sequence: int = 0
    # Per accepted update: (service name, decoded X-Registry-Auth or None without one).
    registry_auths: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)
    latency: float = 0.0
    # UpdateStatus.State an update of the task template ends in; "updating" never ends.
    rollout: str = "completed"
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Services a `rolling` update is replacing the tasks of: how many run the new spec.
    _rolling: dict[str, int] = field(default_factory=dict)

    def add(
        self,
        stack: str,
        name: str,
        *,
        replicas: int | None = 1,
        image: str | None = None,
    ) -> dict[str, Any]:
        """A service as ``docker stack deploy`` creates it; `replicas` None means global mode."""
        image = image or f"{name}:1.0"
        service_id = f"svc{next(self._ids):022d}"
        mode: dict[str, Any] = (
            {"Global": {}} if replicas is None else {"Replicated": {"Replicas": replicas}}
        )
        service = {
            "ID": service_id,
            "Version": {"Index": 10},
            "CreatedAt": "2026-11-27T10:00:00.000000000Z",
            "UpdatedAt": "2026-11-27T10:00:00.000000000Z",
            "Spec": {
                "Name": f"{stack}_{name}",
                "Labels": {STACK: stack, "com.docker.stack.image": image},
                "TaskTemplate": {
                    "ContainerSpec": {"Image": image, "Labels": {STACK: stack}},
                    "ForceUpdate": 0,
                    "Runtime": "container",
                },
                "Mode": mode,
            },
            "Endpoint": {"Spec": {"Mode": "vip"}},
        }
        self.services[service_id] = service
        return service

    def spec(self, full_name: str) -> Any:
        """The current spec of a service by name."""
        found = self._find(full_name)
        assert found is not None, full_name
        return found["Spec"]

    def fail(
        self, fault: Fault, *, method: str | None = None, suffix: str | None = None, times: int = 1
    ) -> None:
        """Answer `fault` (a status, or "hang") to the next `times` matching requests."""
        self.faults.fail(fault, method=method, suffix=suffix, times=times)

    def release(self) -> None:
        """End every hanging request."""
        self.faults.release()

    def _find(self, ref: str) -> dict[str, Any] | None:
        if ref in self.services:
            return self.services[ref]
        return next((s for s in self.services.values() if s["Spec"]["Name"] == ref), None)

    # -- the HTTP side ---------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving the Engine API."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/version", self._version)
        app.router.add_get("/v{v}/services", self._list)
        app.router.add_get("/v{v}/services/{ref}", self._inspect)
        app.router.add_post("/v{v}/services/{ref}/update", self._update)
        app.router.add_get("/v{v}/tasks", self._tasks)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self.faults.take(request)
        if fault == "hang":
            await self.faults.hang()
            return _error(504, "released")
        if fault == "not-a-manager":
            return _error(
                503,
                'This node is not a swarm manager. Use "docker swarm init" or "docker swarm '
                'join" to connect this node to swarm and try again.',
            )
        if fault == "out-of-sequence":
            return _error(500, "rpc error: code = Unknown desc = update out of sequence")
        if fault is not None:
            return _error(int(fault), f"injected {fault}")
        response: web.StreamResponse = await handler(request)
        return response

    async def _version(self, request: web.Request) -> web.Response:
        return _json({"Version": "27.3.1", "ApiVersion": API_VERSION, "MinAPIVersion": "1.24"})

    async def _list(self, request: web.Request) -> web.Response:
        filters = json.loads(request.query.get("filters") or "{}")
        labels = filters.get("label", [])
        labels = [labels] if isinstance(labels, str) else list(labels)
        wanted = dict(label.split("=", 1) for label in labels)
        found = [
            s
            for s in self.services.values()
            if all(s["Spec"].get("Labels", {}).get(k) == v for k, v in wanted.items())
        ]
        return _json(found)

    async def _inspect(self, request: web.Request) -> web.Response:
        service = self._find(request.match_info["ref"])
        if service is None:
            return _error(404, f"service {request.match_info['ref']} not found")
        return _json(service)

    async def _update(self, request: web.Request) -> web.Response:
        service = self._find(request.match_info["ref"])
        if service is None:
            return _error(404, f"service {request.match_info['ref']} not found")
        version = request.query.get("version")
        if version is None or not version.isdigit():
            return _error(400, "invalid service version")
        if int(version) != service["Version"]["Index"]:
            self.out_of_sequence += 1
            return _error(500, "rpc error: code = Unknown desc = update out of sequence")
        header = request.headers.get("X-Registry-Auth")
        auth = None if header is None else _registry_auth(header)
        if header is not None and auth is None:
            return _error(400, "invalid X-Registry-Auth header: not base64url-encoded JSON")
        spec = json.loads(await request.read())
        if spec.get("Name") != service["Spec"]["Name"]:
            return _error(400, "renaming services is not supported")
        self.registry_auths.append((spec["Name"], auth))
        updated = copy.deepcopy(service)
        updated["Spec"] = spec
        updated["PreviousSpec"] = service["Spec"]
        updated["Version"]["Index"] = service["Version"]["Index"] + 3
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        updated["UpdatedAt"] = now
        if spec.get("TaskTemplate") != service["Spec"].get("TaskTemplate"):
            state = "updating" if self.rollout == "rolling" else self.rollout
            updated["UpdateStatus"] = {
                "State": state,
                "StartedAt": now,
                "Message": f"update {state}",
            }
            if self.rollout == "rolling":
                self._rolling[service["ID"]] = 0
        self.services[service["ID"]] = updated
        return _json({"Warnings": None})

    async def _tasks(self, request: web.Request) -> web.Response:
        filters = json.loads(request.query.get("filters") or "{}")
        wanted = filters.get("service", [])
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        listed = [
            s
            for s in self.services.values()
            if not wanted or s["ID"] in wanted or s["Spec"]["Name"] in wanted
        ]
        tasks = [task for s in listed for task in self._tasks_of(s)]
        for service in listed:
            self._roll_one(service)
        return _json(tasks)

    def _tasks_of(self, service: dict[str, Any]) -> list[dict[str, Any]]:
        """One running task per replica: those a rolling update replaced run the new spec."""
        replicas = service["Spec"]["Mode"].get("Replicated", {}).get("Replicas", 1)
        new = self._rolling.get(service["ID"], replicas)
        old = (service.get("PreviousSpec") or service["Spec"])["TaskTemplate"]
        return [
            {
                "ServiceID": service["ID"],
                "DesiredState": "running",
                "Status": {"State": "running"},
                "Spec": service["Spec"]["TaskTemplate"] if n < new else old,
            }
            for n in range(replicas)
        ]

    def _roll_one(self, service: dict[str, Any]) -> None:
        """A `rolling` update's next step: one more task on the new spec; then completed."""
        if service["ID"] not in self._rolling:
            return
        self._rolling[service["ID"]] += 1
        if self._rolling[service["ID"]] >= service["Spec"]["Mode"].get("Replicated", {}).get(
            "Replicas", 1
        ):
            del self._rolling[service["ID"]]
            service["UpdateStatus"] = {**service["UpdateStatus"], "State": "completed"}


def running_fake_docker() -> AbstractAsyncContextManager[tuple[FakeDocker, str]]:
    """A fake engine on an ephemeral port, and its URL for TRIGGERS_DOCKER_HOST."""
    return serving(FakeDocker())
