"""deploy/compose.yaml + deploy/compose.swarm.yaml deployed as a stack on the real Swarm."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.dockerd import Dockerd

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
STAND_IN = "stand-in:1"
# The stand-in for every image: says whether it may use the Docker socket, then idles.
PROBE = (
    "if [ -r /var/run/docker.sock ] && [ -w /var/run/docker.sock ]; "
    'then echo "socket-ok $(id -u):$(id -g)"; else echo "socket-denied $(id -u):$(id -g)"; fi; '
    "exec sleep 3600"
)


def _sandboxed(config: dict[str, Any]) -> dict[str, Any]:
    """The merged stack with what this machine must not or cannot do taken out: every
    image is the stand-in, no port is published, no health check runs (the stand-in has
    no python), and the services use the host's network namespace instead of an overlay
    (no bridge, no VXLAN port on the host)."""
    for service in config["services"].values():
        service["image"] = STAND_IN
        service.pop("ports", None)
        service.pop("build", None)
        service["healthcheck"] = {"disable": True}
        service["networks"] = ["hostnet"]
    config["networks"] = {"hostnet": {"external": True, "name": "host"}}
    return config


async def test_stack_deploys_and_only_the_worker_can_use_the_socket(
    real_swarm: Dockerd, tmp_path: Path
) -> None:
    """The two files merge and deploy as a stack: PostgreSQL for every service's store, workers on managers, and the worker (user 10001, the host socket's group) can use the Docker socket."""
    if real_swarm.docker("stack", "config", "--help", check=False).returncode != 0:
        pytest.skip("this docker CLI has no `stack config` to merge the files (Docker 23+)")
    gid = os.stat(real_swarm.socket).st_gid
    env = {"DOCKER_GID": str(gid), "DOCKER_SOCKET": str(real_swarm.socket)}
    merged = real_swarm.docker(
        "stack", "config", "-c", str(DEPLOY / "compose.yaml"),
        "-c", str(DEPLOY / "compose.swarm.yaml"), env=env,
    ).stdout  # fmt: skip
    config = yaml.safe_load(merged)
    assert set(config["services"]) == {"rabbitmq", "postgres", "gateway", "worker", "recorder"}
    for name in ("gateway", "worker", "recorder"):
        assert config["services"][name]["environment"]["TRIGGERS_DATABASE"].startswith(
            "postgresql://"
        )
    stack_file = tmp_path / "stack.yaml"
    stack_file.write_text(yaml.safe_dump(_sandboxed(config)))
    real_swarm.build_image(STAND_IN, entrypoint=("/bin/sh", "-c", PROBE), cmd=())
    node = real_swarm.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    real_swarm.docker("node", "update", "--label-add", "container-triggers.db=true", node)
    try:
        real_swarm.docker("stack", "deploy", "-c", str(stack_file), "trg")
        worker = real_swarm.inspect("service", "trg_worker")["Spec"]
        assert worker["Mode"]["Replicated"]["Replicas"] == 2
        assert worker["TaskTemplate"]["Placement"]["Constraints"] == ["node.role == manager"]
        assert worker["TaskTemplate"]["ContainerSpec"]["User"] == f"10001:{gid}"
        for other in ("gateway", "recorder", "rabbitmq", "postgres"):
            mounts = real_swarm.inspect("service", f"trg_{other}")["Spec"]["TaskTemplate"][
                "ContainerSpec"
            ].get("Mounts", [])
            assert all(m["Target"] != "/var/run/docker.sock" for m in mounts), other
        logs = ""
        deadline = asyncio.get_running_loop().time() + 150
        while logs.count("socket-") < 2:
            assert asyncio.get_running_loop().time() < deadline, real_swarm.docker(
                "service", "ps", "--no-trunc", "trg_worker"
            ).stdout
            await asyncio.sleep(0.5)
            logs = real_swarm.docker("service", "logs", "--raw", "trg_worker").stdout
        assert logs.count(f"socket-ok 10001:{gid}") == 2, logs
    finally:
        real_swarm.docker("stack", "rm", "trg", check=False)
        real_swarm.docker(
            "node", "update", "--label-rm", "container-triggers.db", "self", check=False
        )
