"""deploy/: the Kubernetes base renders with least-privilege RBAC; compose, image and broker definitions agree with the code."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml

from shared.amqp_transport import BrokerNodes
from shared.settings import Settings
from shared.topology import (
    COMMAND_QUEUES,
    RECORDER_QUEUE,
    RECORDER_QUEUE_ARGUMENTS,
    RETRY_EXCHANGE,
    Replication,
    declare,
    declare_recorder_queue,
)
from tests.support.broker import broker_list, private_vhost

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ALLOWED_VERBS = {"get", "list", "patch"}
ALLOWED_RESOURCES = {"deployments", "deployments/scale", "statefulsets", "statefulsets/scale"}


def render_k8s() -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/k8s`, parsed; without kubectl, the base's resources read in order.

    The base uses no patches or generators, so reading its resources gives the same
    objects apart from the common label; the kubectl path is the one CI takes.
    """
    kubectl = shutil.which("kubectl")
    if kubectl:
        rendered = subprocess.run(
            [kubectl, "kustomize", str(DEPLOY / "k8s")],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        return [d for d in yaml.safe_load_all(rendered) if d]
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d)
    return docs


@pytest.mark.unit
def test_kustomization_lists_every_manifest() -> None:
    """No manifest in deploy/k8s is left out of the kustomization (and so never applied)."""
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.unit
def test_rendered_rbac_is_least_privilege() -> None:
    """Only Roles granting get/list/patch on deployments, statefulsets and their /scale; no wildcard, no cluster-wide grant."""
    docs = render_k8s()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "RabbitmqCluster", "Role"} <= kinds
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    roles = [d for d in docs if d["kind"] == "Role"]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule.get("verbs", []), role["metadata"]["name"]
            assert "*" not in rule.get("resources", []), role["metadata"]["name"]
            assert "*" not in rule.get("apiGroups", []), role["metadata"]["name"]
            assert set(rule["apiGroups"]) == {"apps"}
            assert set(rule["verbs"]) <= ALLOWED_VERBS
            assert set(rule["resources"]) <= ALLOWED_RESOURCES
            assert "resourceNames" not in rule or rule["resourceNames"]
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] != "cluster-admin"
        assert [s["name"] for s in binding["subjects"]] == ["triggers-worker"]


@pytest.mark.unit
def test_rendered_pods_run_unprivileged() -> None:
    """Every container runs as non-root, without privilege escalation, with a read-only root filesystem."""
    deployments = [d for d in render_k8s() if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"triggers-gateway", "triggers-worker"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
    gateway = next(d for d in deployments if d["metadata"]["name"] == "triggers-gateway")
    assert gateway["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


@pytest.mark.unit
def test_image_runs_as_a_non_root_user() -> None:
    """The Dockerfile's final stage switches to a numeric non-root user before its entry point."""
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users
    assert re.fullmatch(r"[1-9][0-9]*", users[-1])
    assert any(line.startswith('ENTRYPOINT ["triggers"]') for line in final)


@pytest.mark.unit
def test_compose_file_is_valid() -> None:
    """deploy/compose.yaml has the broker with its definitions, the gateway, the worker and the recorder; `docker compose config` accepts it where the plugin exists."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"rabbitmq", "gateway", "worker", "recorder"}
    mounts = compose["services"]["rabbitmq"]["volumes"]
    assert "./rabbitmq/definitions.json:/etc/rabbitmq/definitions.json:ro" in mounts
    for name in ("gateway", "worker", "recorder"):
        assert compose["services"][name]["image"] == "container-triggers"
    swarm = yaml.safe_load((DEPLOY / "compose.swarm.yaml").read_text())
    assert swarm["services"]["worker"]["environment"]["TRIGGERS_ORCHESTRATOR"] == "swarm"
    docker = shutil.which("docker")
    if docker is None:
        return
    plugin = subprocess.run(
        [docker, "compose", "version"], capture_output=True, check=False, timeout=30
    )
    if plugin.returncode == 0:
        subprocess.run(
            [docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
            check=True,
            timeout=60,
        )


def _broker_definitions(amqp_url: str) -> dict[str, list[dict[str, Any]]]:
    """A vhost's exchanges, queues and bindings as the broker lists them, in the shape of
    definitions.json (the broker's own exchanges and the default bindings left out)."""

    def arguments(raw: list[list[Any]]) -> dict[str, Any]:
        return {name: value for name, _type, value in raw}  # rabbitmqctl: [name, type, value]

    exchanges = broker_list(
        amqp_url, "exchanges", "name", "type", "durable", "auto_delete", "internal", "arguments"
    )
    queues = broker_list(amqp_url, "queues", "name", "durable", "auto_delete", "arguments")
    bindings = broker_list(
        amqp_url,
        "bindings",
        "source_name",
        "destination_name",
        "destination_kind",
        "routing_key",
        "arguments",
    )
    return {
        "exchanges": [
            {**e, "arguments": arguments(e["arguments"])}
            for e in exchanges
            if e["name"] and not e["name"].startswith("amq.")
        ],
        "queues": [{**q, "arguments": arguments(q["arguments"])} for q in queues],
        "bindings": [
            {
                "source": b["source_name"],
                "destination": b["destination_name"],
                "destination_type": b["destination_kind"],
                "routing_key": b["routing_key"],
                "arguments": arguments(b["arguments"]),
            }
            for b in bindings
            if b["source_name"]
        ],
    }


# The fields compared, per kind of object (the vhost is checked on its own).
_COMPARED = {
    "exchanges": ("name", "type", "durable", "auto_delete", "internal", "arguments"),
    "queues": ("name", "durable", "auto_delete", "arguments"),
    "bindings": ("source", "destination", "destination_type", "routing_key", "arguments"),
}


def _topology(definitions: dict[str, Any]) -> dict[str, list[str]]:
    """Every exchange, queue and binding as one sorted line of JSON of its compared fields."""
    return {
        kind: sorted(
            json.dumps({f: item[f] for f in fields}, sort_keys=True) for item in definitions[kind]
        )
        for kind, fields in _COMPARED.items()
    }


async def test_broker_definitions_match_what_the_processes_declare() -> None:
    """definitions.json holds exactly the exchanges, queues (every argument) and bindings
    the gateway, workers and recorder declare with the default settings: any drift fails."""
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    with private_vhost() as url:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await declare(channel, Settings().retry_delays)
            await declare_recorder_queue(channel)
        declared = await asyncio.to_thread(_broker_definitions, url)
    defined, wanted = _topology(definitions), _topology(declared)
    for kind in _COMPARED:
        missing = sorted(set(wanted[kind]) - set(defined[kind]))
        extra = sorted(set(defined[kind]) - set(wanted[kind]))
        assert (missing, extra) == ([], []), f"{kind}: missing {missing}; not declared {extra}"
    assert defined == wanted  # and nothing twice
    # The comparison sees what matters: every retry queue, the recorder's arguments.
    queues = {q["name"]: q["arguments"] for q in declared["queues"]}
    retry = [name for name in queues if name.startswith(f"{RETRY_EXCHANGE}.")]
    assert len(retry) == len(COMMAND_QUEUES) * len(Settings().retry_delays)
    assert queues[RECORDER_QUEUE] == {**RECORDER_QUEUE_ARGUMENTS, **Replication().arguments()}
    # Replicated on up to 3 nodes with leaders spread, as a cluster needs: every queue.
    assert all(args["x-quorum-initial-group-size"] == 3 for args in queues.values())
    assert all(args["x-queue-leader-locator"] == "balanced" for args in queues.values())
    # Every object is in the one vhost the file defines, which the one user may use.
    (vhost,) = [v["name"] for v in definitions["vhosts"]]
    objects = [*definitions["exchanges"], *definitions["queues"], *definitions["bindings"]]
    assert {o["vhost"] for o in objects} == {vhost}
    assert [u["name"] for u in definitions["users"]] == ["triggers"]
    assert [(p["user"], p["vhost"]) for p in definitions["permissions"]] == [("triggers", vhost)]


@pytest.mark.unit
def test_compose_cluster_override_gives_every_process_the_three_nodes() -> None:
    """deploy/compose.cluster.yaml adds two RabbitMQ nodes that join the first (one cookie,
    peer discovery naming all three) and hands every process the three nodes' URLs."""
    override = yaml.safe_load((DEPLOY / "compose.cluster.yaml").read_text())
    services = override["services"]
    nodes = ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
    assert set(nodes) <= set(services)
    cookies = {services[n]["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] for n in nodes}
    assert len(cookies) == 1
    for name in nodes:
        assert (
            "./rabbitmq/cluster.conf:/etc/rabbitmq/conf.d/20-cluster.conf:ro"
            in (services[name]["volumes"])
        )
    for name in nodes[1:]:
        assert (
            "./rabbitmq/definitions.json:/etc/rabbitmq/definitions.json:ro"
            in (services[name]["volumes"])
        )
    conf = (DEPLOY / "rabbitmq" / "cluster.conf").read_text()
    assert all(f"= rabbit@{n}\n" in conf for n in nodes)
    for name in ("gateway", "worker", "recorder"):
        listed = BrokerNodes(services[name]["environment"]["TRIGGERS_AMQP_URL"], shuffle=False)
        assert [host for host, _ in listed.addresses] == nodes
    docker = shutil.which("docker")
    if docker is None:
        return
    plugin = subprocess.run(
        [docker, "compose", "version"], capture_output=True, check=False, timeout=30
    )
    if plugin.returncode == 0:
        files = ["-f", str(DEPLOY / "compose.yaml"), "-f", str(DEPLOY / "compose.cluster.yaml")]
        subprocess.run([docker, "compose", *files, "config", "--quiet"], check=True, timeout=60)


@pytest.mark.unit
def test_k8s_rabbitmq_is_a_three_node_cluster_that_pauses_a_minority() -> None:
    """deploy/k8s/rabbitmq.yaml asks the operator for 3 replicas with pause_minority, and
    the pod addresses it documents for TRIGGERS_AMQP_URL parse as one cluster."""
    (cluster,) = yaml.safe_load_all((DEPLOY / "k8s" / "rabbitmq.yaml").read_text())
    assert cluster["kind"] == "RabbitmqCluster"
    assert cluster["spec"]["replicas"] == 3
    assert (
        "cluster_partition_handling = pause_minority"
        in (cluster["spec"]["rabbitmq"]["additionalConfig"])
    )
    text = (DEPLOY / "k8s" / "rabbitmq.yaml").read_text()
    pods = re.findall(r"amqp://triggers-rabbitmq-server-\d\.[^,\s]+", text)
    assert len(BrokerNodes(",".join(pods), shuffle=False)) == 3


def _containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every container of every Deployment, by container name."""
    return {
        container["name"]: container
        for doc in docs
        if doc["kind"] == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
    }


@pytest.mark.unit
def test_k8s_ships_no_admin_token_and_requires_the_operators_secret() -> None:
    """No Secret (so no literal token) in the base; the gateway needs `triggers-secrets`."""
    docs = render_k8s()
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == []
    assert "TRIGGERS_ADMIN_TOKEN" not in json.dumps([d for d in docs if d["kind"] == "ConfigMap"])
    gateway = _containers(docs)["gateway"]
    refs = [source["secretRef"] for source in gateway["envFrom"] if "secretRef" in source]
    assert refs == [{"name": "triggers-secrets"}]  # not optional: missing, the pod says so


@pytest.mark.unit
def test_k8s_roles_have_their_namespace() -> None:
    """Each Role and RoleBinding goes to a namespace the base declares."""
    docs = render_k8s()
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    for doc in docs:
        if doc["kind"] in ("Role", "RoleBinding"):
            assert doc["metadata"]["namespace"] in namespaces, doc["metadata"]


@pytest.mark.unit
def test_k8s_worker_and_recorder_have_probes_on_their_metrics_port() -> None:
    """The worker and the recorder serve /metrics on a named port that their probes use."""
    containers = _containers(render_k8s())
    for name in ("worker", "recorder"):
        container = containers[name]
        args = container["args"]
        port = int(args[args.index("--metrics-port") + 1])
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path
            assert named[get["port"]] == port


@pytest.mark.unit
def test_k8s_amqp_credentials_stay_out_of_the_url() -> None:
    """No container pastes the broker password into TRIGGERS_AMQP_URL; it comes apart."""
    for name, container in _containers(render_k8s()).items():
        env = {e["name"]: e for e in container.get("env", [])}
        if "TRIGGERS_AMQP_URL" not in env:
            continue
        assert "$(" not in env["TRIGGERS_AMQP_URL"]["value"], name
        assert "@" not in env["TRIGGERS_AMQP_URL"]["value"], name
        assert "secretKeyRef" in env["TRIGGERS_AMQP_PASSWORD"]["valueFrom"], name


@pytest.mark.unit
def test_image_uses_the_checked_python_and_uvloop() -> None:
    """The Dockerfile's Python is the one mypy and ruff check; it installs the `fast` extra."""
    import tomllib  # noqa: PLC0415

    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    version = project["tool"]["mypy"]["python_version"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM python:([0-9.]+)-slim", dockerfile, re.MULTILINE)
    assert bases
    assert set(bases) == {version}
    assert '".[fast]"' in dockerfile
    assert "uvloop" in " ".join(project["project"]["optional-dependencies"]["fast"])


def test_the_wheel_holds_no_bench_and_every_module_imports(tmp_path: Path) -> None:
    """The wheel (what the image installs) has no `bench`, and each of its modules imports
    without the checkout on the path."""
    import sys  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    root = DEPLOY.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("bench/")]
    modules = sorted(
        n.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for n in names
        if n.endswith(".py")
    )
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    script = (
        "import importlib, sys\n"
        f"sys.path = [p for p in sys.path if p.rstrip('/') != {str(root)!r}]\n"
        f"sys.path.insert(0, {str(unpacked)!r})\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "try:\n"
        "    import bench\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('bench imported from ' + bench.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


async def test_a_broker_password_with_url_characters_connects(amqp_url: str) -> None:
    """TRIGGERS_AMQP_USERNAME/PASSWORD with @ / : % # ? reach RabbitMQ unchanged."""
    import uuid  # noqa: PLC0415

    from shared.broker import AmqpBus  # noqa: PLC0415
    from tests.support.broker import rabbitmqctl  # noqa: PLC0415

    user, password = f"triggers-test-{uuid.uuid4().hex[:8]}", "p@ss/w:rd%#?x"
    vhost = amqp_url.rsplit("/", 1)[1]
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        bare = "amqp://127.0.0.1:" + amqp_url.split("@", 1)[1].split(":", 1)[1]
        settings = Settings.from_env(
            {
                "TRIGGERS_AMQP_URL": bare,
                "TRIGGERS_AMQP_USERNAME": user,
                "TRIGGERS_AMQP_PASSWORD": password,
            }
        )
        assert password not in settings.amqp_url
        bus = AmqpBus.from_settings(settings, "test")
        await bus.start()
        assert bus.ready
        await bus.close()
    finally:
        rabbitmqctl("delete_user", user)


async def test_worker_metrics_port_answers_the_probes(env: dict[str, str]) -> None:
    """A worker's metrics port answers /healthz and, connected to RabbitMQ, /readyz."""
    import aiohttp  # noqa: PLC0415

    from tests.support.processes import service_process  # noqa: PLC0415

    async with service_process(env, "worker") as worker, aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(worker.url + path) as response:
                assert response.status == 200, path


@pytest.mark.unit
def test_compose_says_how_to_seed_the_local_cluster() -> None:
    """compose.yaml's header gives the command that seeds the local cluster."""
    header = [
        line for line in (DEPLOY / "compose.yaml").read_text().splitlines() if line.startswith("#")
    ]
    assert any("triggers local set-app" in line for line in header)
