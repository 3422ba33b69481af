"""A wire-level fake of the Kubernetes API for Deployments and StatefulSets.

It serves the real paths and JSON shapes (``/apis/apps/v1/namespaces/NS/deployments``,
``.../NAME``, ``.../NAME/scale``), applies JSON merge patches (RFC 7386) only, enforces a
``metadata.resourceVersion`` in a patch as a precondition (409 Conflict with a ``Status``
body, as the API server does), bumps ``metadata.generation`` on spec changes only, checks
the bearer token, and can be told to answer an error or hang for the next requests.

It also plays the controllers, enough for ``kubectl rollout status``: after every write
a workload's ``status`` is what its controller would report once it acted. With
`rollout` ``complete`` (the default) every replica is updated and available at once;
``stuck`` is a Deployment whose new pods never become available and whose Progressing
condition says ProgressDeadlineExceeded; ``progressing`` is a rollout that is still going;
``rolling`` replaces one replica at a time (maxSurge 1, maxUnavailable 0): after a write
no replica is updated, and every read of the workload advances its controller by one more
updated replica after answering, until the rollout is complete, so a poller sees each count
in turn whatever its timing.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.orchestrators.faults import Fault, FaultPlan
from tests.orchestrators.serving import serving

__all__ = ["FakeKube", "running_fake_kube", "write_kubeconfig"]

TOKEN = "fake-token-for-tests"
_PLURALS = {"deployments": "Deployment", "statefulsets": "StatefulSet"}


def _json(body: Any, status: int = 200) -> web.Response:
    # Exactly "application/json", as the API server sends it (clients compare it whole).
    return web.Response(
        body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return _json(body, status=code)


_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class FakeKube:
    """The objects, the request log and the fault plan of one fake API server."""

    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    faults: FaultPlan = field(default_factory=FaultPlan)
    conflicts: int = 0
    # Simulated API latency, so that concurrent clients really interleave.
    latency: float = 0.0
    rollout: str = "complete"
    # Replicas the controller reports as not ready yet (pods pending, images pulling).
    ready_lag: int = 0
    _rv: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    # Workloads a `rolling` rollout is replacing: their updated replicas so far.
    _rolling: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def add(
        self,
        name: str,
        *,
        namespace: str = "default",
        kind: str = "deployments",
        labels: dict[str, str] | None = None,
        replicas: int = 1,
        images: list[str] | None = None,
        paused: bool = False,
    ) -> dict[str, Any]:
        """Create a workload as `kubectl apply` would have."""
        containers = [
            {"name": f"c{i}" if i else name, "image": image}
            for i, image in enumerate(images or [f"{name}:1.0"])
        ]
        spec: dict[str, Any] = {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": containers},
            },
        }
        if kind == "statefulsets":
            spec["serviceName"] = name
        if paused:
            spec["paused"] = True
        obj = {
            "apiVersion": "apps/v1",
            "kind": _PLURALS[kind],
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"uid-{name}",
                "labels": labels or {},
                "annotations": {},
                "generation": 1,
                "resourceVersion": str(next(self._rv)),
            },
            "spec": spec,
        }
        self._control(obj, "complete")
        self.objects[(kind, namespace, name)] = obj
        return obj

    def get(self, name: str, *, namespace: str = "default", kind: str = "deployments") -> Any:
        """The stored object."""
        return self.objects[(kind, namespace, name)]

    def touch(self, name: str, *, namespace: str = "default", kind: str = "deployments") -> None:
        """A concurrent writer: change the object's resourceVersion behind the client's back."""
        self.get(name, namespace=namespace, kind=kind)["metadata"]["resourceVersion"] = str(
            next(self._rv)
        )

    def fail(
        self, fault: Fault, *, method: str | None = None, suffix: str | None = None, times: int = 1
    ) -> None:
        """Answer `fault` (a status, or "hang") to the next `times` matching requests."""
        self.faults.fail(fault, method=method, suffix=suffix, times=times)

    def release(self) -> None:
        """End every hanging request."""
        self.faults.release()

    # -- the HTTP side ---------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving the API."""
        app = web.Application(middlewares=[self._middleware])
        base = "/apis/apps/v1/namespaces/{ns}/{plural}"
        app.router.add_get(base, self._list)
        app.router.add_get(base + "/{name}", self._get)
        app.router.add_patch(base + "/{name}", self._patch)
        app.router.add_get(base + "/{name}/scale", self._get_scale)
        app.router.add_patch(base + "/{name}/scale", self._patch_scale)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.latency:
            await asyncio.sleep(self.latency)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized", "Unauthorized")
        fault = self.faults.take(request)
        if fault is not None:
            if fault == "hang":
                await self.faults.hang()
                return _status(504, "Timeout", "released")
            if fault == "proxy-502":
                # A load balancer in front of the API server answering for it: no Status body.
                return web.Response(
                    status=502, text="<html>502 Bad Gateway</html>", content_type="text/html"
                )
            code = int(fault)
            return _status(code, _REASONS.get(code, "Unknown"), f"injected {code}")
        if request.match_info.get("plural") not in _PLURALS:
            return _status(404, "NotFound", "the server could not find the requested resource")
        response: web.StreamResponse = await handler(request)
        return response

    def _lookup(self, request: web.Request) -> dict[str, Any] | None:
        key = (request.match_info["plural"], request.match_info["ns"], request.match_info["name"])
        return self.objects.get(key)

    def _not_found(self, request: web.Request) -> web.Response:
        kind = request.match_info["plural"]
        name = request.match_info["name"]
        return _status(404, "NotFound", f'{kind}.apps "{name}" not found')

    async def _list(self, request: web.Request) -> web.Response:
        selector = request.query.get("labelSelector", "")
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        plural, ns = request.match_info["plural"], request.match_info["ns"]
        items = [
            obj
            for (p, n, _), obj in sorted(self.objects.items())
            if p == plural
            and n == ns
            and all(obj["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        return _json(
            {
                "apiVersion": "apps/v1",
                "kind": f"{_PLURALS[plural]}List",
                "metadata": {"resourceVersion": str(next(self._rv))},
                "items": items,
            }
        )

    async def _get(self, request: web.Request) -> web.Response:
        obj = self._lookup(request)
        if obj is None:
            return self._not_found(request)
        response = _json(obj)
        key = (request.match_info["plural"], request.match_info["ns"], request.match_info["name"])
        if key in self._rolling:
            self._roll_one(key, obj)
        return response

    def _roll_one(self, key: tuple[str, str, str], obj: dict[str, Any]) -> None:
        """A `rolling` controller's next step: one more replica updated and available."""
        updated = self._rolling[key] + 1
        wanted = obj["spec"].get("replicas", 1)
        if updated >= wanted:
            del self._rolling[key]
            self._control(obj, "complete")
            return
        self._rolling[key] = updated
        status = obj["status"]
        status.update(updatedReplicas=updated, replicas=wanted + 1, availableReplicas=wanted)

    async def _read_patch(self, request: web.Request, obj: dict[str, Any]) -> Any:
        if request.content_type != "application/merge-patch+json":
            return _status(
                415, "UnsupportedMediaType", f"merge patches only, not {request.content_type}"
            )
        patch = json.loads(await request.read())
        wanted = (patch.get("metadata") or {}).pop("resourceVersion", None)
        if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
            self.conflicts += 1
            kind = request.match_info["plural"]
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind}.apps "{obj["metadata"]["name"]}": '
                "the object has been modified; please apply your changes to the latest "
                "version and try again",
            )
        return patch

    def _store(self, request: web.Request, obj: dict[str, Any], new: dict[str, Any]) -> None:
        if new.get("spec") != obj.get("spec"):
            new["metadata"]["generation"] = obj["metadata"]["generation"] + 1
        new["metadata"]["resourceVersion"] = str(next(self._rv))
        key = (request.match_info["plural"], request.match_info["ns"], request.match_info["name"])
        if self.rollout != "rolling":
            self._control(new, self.rollout, self.ready_lag)
        elif new["spec"].get("template") != obj["spec"].get("template"):
            self._control(new, "progressing", self.ready_lag)
            wanted = new["spec"].get("replicas", 1)
            new["status"].update(updatedReplicas=0, availableReplicas=wanted)
            self._rolling[key] = 0
        elif key not in self._rolling:  # a scale: no pod changes its spec
            self._control(new, "complete", self.ready_lag)
        self.objects[key] = new

    @staticmethod
    def _control(obj: dict[str, Any], rollout: str, ready_lag: int = 0) -> None:
        """Set the status the workload's controller reports after acting on the spec."""
        wanted = obj["spec"].get("replicas", 1)
        generation = obj["metadata"]["generation"]
        updated = {"complete": wanted, "stuck": 0, "progressing": max(wanted - 1, 0)}[rollout]
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "replicas": wanted if rollout == "complete" else wanted + 1,
            "updatedReplicas": updated,
            "readyReplicas": max(wanted - ready_lag, 0),
            "availableReplicas": wanted if rollout == "complete" else wanted - updated,
        }
        if obj["kind"] == "StatefulSet":
            revision = f"{obj['metadata']['name']}-{generation}"
            status["updateRevision"] = revision
            status["currentRevision"] = revision if rollout == "complete" else "previous"
        else:
            progressing = {
                "type": "Progressing",
                "status": "False" if rollout == "stuck" else "True",
                "reason": {
                    "complete": "NewReplicaSetAvailable",
                    "stuck": "ProgressDeadlineExceeded",
                    "progressing": "ReplicaSetUpdated",
                }[rollout],
                "message": f'ReplicaSet "{obj["metadata"]["name"]}-{generation}" '
                + ("has timed out progressing." if rollout == "stuck" else "is progressing."),
            }
            status["conditions"] = [progressing]
        obj["status"] = status

    async def _patch(self, request: web.Request) -> web.Response:
        obj = self._lookup(request)
        if obj is None:
            return self._not_found(request)
        patch = await self._read_patch(request, obj)
        if isinstance(patch, web.Response):
            return patch
        new = merge_patch(obj, patch)
        self._store(request, obj, new)
        return _json(new)

    def _scale(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
            },
            "spec": {"replicas": obj["spec"]["replicas"]},
            "status": {"replicas": obj["spec"]["replicas"], "selector": f"app={meta['name']}"},
        }

    async def _get_scale(self, request: web.Request) -> web.Response:
        obj = self._lookup(request)
        return _json(self._scale(obj)) if obj is not None else self._not_found(request)

    async def _patch_scale(self, request: web.Request) -> web.Response:
        obj = self._lookup(request)
        if obj is None:
            return self._not_found(request)
        patch = await self._read_patch(request, obj)
        if isinstance(patch, web.Response):
            return patch
        replicas = (patch.get("spec") or {}).get("replicas")
        new = copy.deepcopy(obj)
        if isinstance(replicas, int):
            new["spec"]["replicas"] = replicas
        self._store(request, obj, new)
        return _json(self._scale(new))


def running_fake_kube() -> AbstractAsyncContextManager[tuple[FakeKube, str]]:
    """A fake API server on an ephemeral port, and its base URL."""
    return serving(FakeKube())


def write_kubeconfig(
    path: Path, server: str, contexts: dict[str, str | None], *, token: str = TOKEN
) -> Path:
    """A kubeconfig with one context per name (value: its namespace), all on `server`."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "worker", "user": {"token": token}}],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": "fake", "user": "worker"}
                | ({"namespace": namespace} if namespace else {}),
            }
            for name, namespace in contexts.items()
        ],
        "current-context": next(iter(contexts)),
    }
    path.write_text(json.dumps(config))  # JSON is YAML, as kubectl reads it
    return path
