"""Swarm updates carry X-Registry-Auth from TRIGGERS_DOCKER_CONFIG, as `--with-registry-auth`."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import msgspec
import pytest
from structlog.testing import capture_logs

from shared.broker import AmqpBus
from shared.errors import ConfigError
from shared.images import image_registry, registry_host
from shared.messages import Command, CommandEnvelope, Redeploy, Scale, Target, new_job_id
from shared.settings import Settings
from tests.orchestrators.fake_docker import FakeDocker
from tests.support.cli import triggers_cli
from tests.support.workers import Results
from workers.orchestrators import open_orchestrator
from workers.orchestrators.registry_auth import RegistryAuth
from workers.orchestrators.swarm import SwarmOrchestrator
from workers.worker import Worker

SHOP = Target(cluster="prod", app="shop")
WEB = Target(cluster="prod", app="shop", service="web")
API = Target(cluster="prod", app="shop", service="api")
HUB = "https://index.docker.io/v1/"

Swarm = Callable[[Path], AbstractAsyncContextManager[SwarmOrchestrator]]


def basic(user: str, password: str) -> dict[str, str]:
    """An ``auths`` entry as `docker login` writes it: base64 of user:password."""
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def write_config(path: Path, auths: dict[str, Any], **extra: Any) -> Path:
    """A Docker client config.json, replaced atomically as a mounted Secret is."""
    staged = path.with_suffix(".new")
    staged.write_text(json.dumps({"auths": auths, **extra}))
    staged.replace(path)
    return path


def sent(fake: FakeDocker, service: str) -> list[dict[str, Any] | None]:
    """The decoded X-Registry-Auth of each update of a service (None: no header)."""
    return [auth for name, auth in fake.registry_auths if name == service]


@pytest.fixture
def swarm_with(fake_docker: tuple[FakeDocker, str]) -> Swarm:
    """The adapter configured from the environment with TRIGGERS_DOCKER_CONFIG=path."""

    @asynccontextmanager
    async def opened(path: Path) -> AsyncIterator[SwarmOrchestrator]:
        settings = Settings.from_env(
            {
                "TRIGGERS_ORCHESTRATOR": "swarm",
                "TRIGGERS_DOCKER_HOST": fake_docker[1],
                "TRIGGERS_DOCKER_CONFIG": str(path),
            }
        )
        orchestrator = open_orchestrator(settings)
        assert isinstance(orchestrator, SwarmOrchestrator)
        try:
            yield orchestrator
        finally:
            await orchestrator.close()

    return opened


@pytest.mark.unit
@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("nginx", "docker.io"),
        ("library/nginx:1.27", "docker.io"),
        ("docker.io/acme/app", "docker.io"),
        ("index.docker.io/acme/app@sha256:ab", "docker.io"),
        ("ghcr.io/acme/shop-api:1.5", "ghcr.io"),
        ("Registry.Example.com:5000/team/app:2", "registry.example.com:5000"),
        ("localhost/app", "localhost"),
        ("acme/app:1", "docker.io"),
    ],
)
def test_registry_of_an_image_as_docker_resolves_it(image: str, registry: str) -> None:
    """No registry part or docker.io is Docker Hub; a first part with '.', ':' or localhost is the host."""
    assert image_registry(image) == registry


@pytest.mark.unit
@pytest.mark.parametrize(
    ("key", "host"),
    [
        (HUB, "docker.io"),
        ("docker.io", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("https://registry.example.com:5000/v2/", "registry.example.com:5000"),
        ("http://localhost:5000", "localhost:5000"),
        ("ghcr.io", "ghcr.io"),
    ],
)
def test_config_keys_match_with_or_without_scheme_and_path(key: str, host: str) -> None:
    """Keys of `auths` are compared by host[:port], as the Docker CLI converts legacy keys."""
    assert registry_host(key) == host


@pytest.mark.unit
@pytest.mark.parametrize("key", ["ghcr.io", "https://ghcr.io/v2/"])
async def test_private_image_redeploy_sends_that_registrys_credentials(
    fake_docker: tuple[FakeDocker, str], swarm_with: Swarm, tmp_path: Path, key: str
) -> None:
    """A redeploy with a new ghcr.io image sends the ghcr.io entry: username, password, serveraddress."""
    fake, _ = fake_docker
    config = write_config(
        tmp_path / "config.json", {HUB: basic("hub-user", "hub-pw"), key: basic("ci-bot", "gh-pw")}
    )
    async with swarm_with(config) as swarm:
        await swarm.redeploy("job-p", SHOP, image="ghcr.io/acme/shop-api:1.5")
    assert sent(fake, "shop_api") == [
        {"username": "ci-bot", "password": "gh-pw", "serveraddress": key}
    ]
    assert fake.spec("shop_api")["TaskTemplate"]["ContainerSpec"]["Image"] == (
        "ghcr.io/acme/shop-api:1.5"
    )


@pytest.mark.unit
@pytest.mark.parametrize("key", [HUB, "docker.io", "index.docker.io"])
async def test_docker_hub_image_picks_the_hub_entry(
    fake_docker: tuple[FakeDocker, str], swarm_with: Swarm, tmp_path: Path, key: str
) -> None:
    """nginx:1.27 (no registry part) is a Docker Hub image: scaling it sends the Hub entry."""
    fake, _ = fake_docker
    auths = {"ghcr.io": basic("ci-bot", "gh-pw"), key: {"username": "hub", "password": "hub-pw"}}
    config = write_config(tmp_path / "config.json", auths)
    async with swarm_with(config) as swarm:
        await swarm.scale("job-h", WEB, delta=1)
    assert sent(fake, "shop_web") == [
        {"username": "hub", "password": "hub-pw", "serveraddress": key}
    ]


@pytest.mark.unit
async def test_redeploy_sends_each_service_the_credentials_of_its_current_image(
    fake_docker: tuple[FakeDocker, str], swarm_with: Swarm, tmp_path: Path
) -> None:
    """Without a new image, every service of the stack gets its own image's registry entry."""
    fake, _ = fake_docker
    config = write_config(
        tmp_path / "config.json", {HUB: basic("hub", "hub-pw"), "ghcr.io": basic("ci-bot", "gh-pw")}
    )
    async with swarm_with(config) as swarm:
        await swarm.redeploy("job-r", SHOP)
    users = {name: auth and auth["username"] for name, auth in fake.registry_auths}
    assert users == {"shop_web": "hub", "shop_agent": "hub", "shop_api": "ci-bot"}


@pytest.mark.unit
async def test_registry_without_an_entry_gets_no_header(
    fake_docker: tuple[FakeDocker, str], swarm_with: Swarm, tmp_path: Path
) -> None:
    """An image whose registry the file does not list is updated without X-Registry-Auth."""
    fake, _ = fake_docker
    config = write_config(tmp_path / "config.json", {"registry.example.com": basic("u", "p")})
    async with swarm_with(config) as swarm:
        await swarm.redeploy("job-n", SHOP, image="ghcr.io/acme/shop-api:1.5")
        await swarm.scale("job-n2", WEB, delta=1)
    assert fake.registry_auths == [("shop_api", None), ("shop_web", None)]


@pytest.mark.unit
async def test_identity_token_is_sent_instead_of_a_password(
    fake_docker: tuple[FakeDocker, str], swarm_with: Swarm, tmp_path: Path
) -> None:
    """An entry with identitytoken (as `az acr login` writes) sends identitytoken and serveraddress."""
    fake, _ = fake_docker
    fake.add("shop", "jobs", image="acme.azurecr.io/shop/jobs:3")
    entry = basic("00000000-0000-0000-0000-000000000000", "") | {"identitytoken": "eyJ.refresh"}
    config = write_config(tmp_path / "config.json", {"acme.azurecr.io": entry})
    async with swarm_with(config) as swarm:
        await swarm.redeploy("job-t", SHOP, image="acme.azurecr.io/shop/jobs:4")
    assert sent(fake, "shop_jobs") == [
        {"serveraddress": "acme.azurecr.io", "identitytoken": "eyJ.refresh"}
    ]


@pytest.mark.unit
async def test_rotated_credentials_are_used_by_the_next_update(
    fake_docker: tuple[FakeDocker, str], swarm_with: Swarm, tmp_path: Path
) -> None:
    """Rewriting the file with new credentials: the next update sends them, without a restart."""
    fake, _ = fake_docker
    config = write_config(tmp_path / "config.json", {"ghcr.io": basic("ci-bot", "old-pw")})
    async with swarm_with(config) as swarm:
        await swarm.scale("job-1", API, delta=1)
        write_config(config, {"ghcr.io": basic("ci-bot-2", "new-pw")})
        await swarm.scale("job-2", API, delta=1)
    assert [auth and auth["password"] for auth in sent(fake, "shop_api")] == ["old-pw", "new-pw"]


@pytest.mark.unit
async def test_unreadable_rewrite_keeps_the_credentials_read_before(
    fake_docker: tuple[FakeDocker, str], swarm_with: Swarm, tmp_path: Path
) -> None:
    """A rewrite that is not JSON (or a missing file) mid-run: updates go on with the last good credentials, one warning each."""
    fake, _ = fake_docker
    config = write_config(tmp_path / "config.json", {"ghcr.io": basic("ci-bot", "good-pw")})
    async with swarm_with(config) as swarm:
        config.write_text('{"auths": {"ghcr.io": {"auth": "Y2k')
        with capture_logs() as logs:
            await swarm.scale("job-1", API, delta=1)
            await swarm.scale("job-2", API, delta=1)
            config.unlink()
            await swarm.scale("job-3", API, delta=1)
        write_config(config, {"ghcr.io": basic("ci-bot", "fixed-pw")})
        await swarm.scale("job-4", API, delta=1)
    passwords = [auth and auth["password"] for auth in sent(fake, "shop_api")]
    assert passwords == ["good-pw", "good-pw", "good-pw", "fixed-pw"]
    warnings = [e for e in logs if e["event"] == "swarm.registry_auth_unusable"]
    assert ["not JSON" in w["error"] for w in warnings] == [True, False]
    assert all(str(config) in w["error"] for w in warnings)


@pytest.mark.unit
async def test_registry_only_a_credential_helper_knows_gets_a_warning_once(
    fake_docker: tuple[FakeDocker, str], swarm_with: Swarm, tmp_path: Path
) -> None:
    """credsStore with an empty auths entry: no header, and one warning naming the registry and helper."""
    fake, _ = fake_docker
    config = write_config(
        tmp_path / "config.json",
        {"ghcr.io": {}, "registry.example.com": basic("u", "p")},
        credsStore="desktop",
        credHelpers={"https://123.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login"},
    )
    async with swarm_with(config) as swarm:
        with capture_logs() as logs:
            await swarm.scale("job-1", API, delta=1)
            await swarm.scale("job-2", API, delta=1)
    assert sent(fake, "shop_api") == [None, None]
    (warning,) = [e for e in logs if e["event"] == "swarm.registry_auth_helper_unsupported"]
    assert (warning["registry"], warning["helper"], warning["log_level"]) == (
        "ghcr.io",
        "desktop",
        "warning",
    )


@pytest.mark.unit
async def test_fake_engine_rejects_a_header_that_is_not_base64url_json(
    fake_docker: tuple[FakeDocker, str],
) -> None:
    """Like the Engine, the fake answers 400 to an X-Registry-Auth it cannot decode, and changes nothing."""
    fake, url = fake_docker
    service = fake.spec("shop_web")
    service_id = next(i for i, s in fake.services.items() if s["Spec"] is service)
    standard_alphabet = base64.b64encode(b'{"username":"a?>"}').decode()
    async with aiodocker.Docker(url=url) as docker:
        for header in ["not base64!", base64.urlsafe_b64encode(b"[1]").decode(), standard_alphabet]:
            with pytest.raises(aiodocker.DockerError) as caught:
                await docker._query_json(
                    f"services/{service_id}/update",
                    method="POST",
                    params={"version": "10"},
                    data=json.dumps(service),
                    headers={"X-Registry-Auth": header},
                )
            assert caught.value.status == 400
    assert fake.registry_auths == []


async def test_credentials_never_reach_logs_results_or_the_ledger(
    settings: Settings,
    fake_docker: tuple[FakeDocker, str],
    bus: AmqpBus,
    results: Results,
    tmp_path: Path,
) -> None:
    """A worker that redeploys a private image, scales a Hub one and fails a scale: no credential in its logs, results, errors or ledger."""
    fake, url = fake_docker
    secrets = ["ci-bot-user", "gh-pw-Xq7", "eyJ.hub-token"]
    auths = {"ghcr.io": basic(secrets[0], secrets[1]), HUB: {"identitytoken": secrets[2]}}
    config = write_config(tmp_path / "config.json", auths)
    configured = settings.with_(
        orchestrator="swarm", docker_host=url, docker_config=str(config), orchestrator_timeout=2.0
    )
    commands: list[tuple[Target, Command]] = [
        (SHOP, Redeploy(image="ghcr.io/acme/shop-api:1.5")),
        (WEB, Scale(direction="scale_out", step=1)),
        (WEB, Scale(direction="scale_out", step=1)),  # the engine refuses it (403)
    ]
    events = []
    with capture_logs() as logs:
        orchestrator = open_orchestrator(configured)
        amqp = AmqpBus(settings.amqp_url, role="test-worker")
        await amqp.start()
        worker = Worker(configured, amqp, orchestrator)
        await worker.start()
        try:
            for i, (target, command) in enumerate(commands):
                if i == 2:
                    fake.fail(403, method="POST", suffix="/update")
                envelope = CommandEnvelope(
                    job_id=new_job_id(), trigger_id="t" * 26, target=target, command=command
                )
                await bus.publish_command(envelope)
                events.extend(await results.wait_for(envelope.job_id))
        finally:
            await worker.stop()
            await amqp.close()
            await orchestrator.close()
    assert [e.status for e in events] == ["succeeded", "succeeded", "failed"]
    assert [(name, bool(auth)) for name, auth in fake.registry_auths] == [
        ("shop_api", True),
        ("shop_web", True),
    ]
    visible = json.dumps(logs, default=str) + msgspec.json.encode(events).decode()
    visible += json.dumps([fake.spec(f"shop_{s}")["Labels"] for s in ("web", "api")])
    assert "refused access" in visible  # the failure's error is among what was checked
    headers = [RegistryAuth(str(config)).header(i) for i in ("ghcr.io/a/b", "nginx")]
    for secret in [*secrets, auths["ghcr.io"]["auth"], *headers]:
        assert secret
        assert secret not in visible


@pytest.mark.unit
@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"auths": {"ghcr.io": {"auth": ', "is not JSON: Expecting value at line 1"),
        ('["ghcr.io"]', "must hold a JSON object"),
        ('{"auths": ["ghcr.io"]}', "auths must be an object"),
        ('{"auths": {"ghcr.io": "x"}}', "auths['ghcr.io'] must be an object"),
        ('{"auths": {"ghcr.io": {"password": 7}}}', "auths['ghcr.io'].password must be a string"),
        ('{"auths": {}, "credsStore": 1}', "credsStore must be a string"),
        ('{"auths": {"ghcr.io": {"auth": "%%%c2VjcmV0"}}}', "auth must be base64 of user:password"),
        ('{"auths": {"ghcr.io": {"auth": "c2VjcmV0"}}}', "auth must be base64 of user:password"),
    ],
)
def test_unusable_docker_config_is_refused_naming_the_part(
    tmp_path: Path, content: str, words: str
) -> None:
    """Each malformation is a ConfigError naming the file and the part, never quoting a value."""
    config = tmp_path / "config.json"
    config.write_text(content)
    with pytest.raises(ConfigError) as caught:
        RegistryAuth(str(config))
    assert str(caught.value).startswith(f"TRIGGERS_DOCKER_CONFIG: {config}")
    assert words in str(caught.value)
    assert "c2VjcmV0" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "words"),
    [('{"auths": {"ghcr.io": {"auth": ', "is not JSON"), (None, "cannot read it")],
)
def test_malformed_or_missing_docker_config_stops_worker_start(
    env: dict[str, str], tmp_path: Path, content: str | None, words: str
) -> None:
    """`triggers worker` with a malformed or missing TRIGGERS_DOCKER_CONFIG exits 1 naming the file and the problem."""
    config = tmp_path / "docker" / "config.json"
    if content is not None:
        config.parent.mkdir()
        config.write_text(content)
    done = subprocess.run(
        [*triggers_cli(), "worker"],
        env=env | {"TRIGGERS_ORCHESTRATOR": "swarm", "TRIGGERS_DOCKER_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"Error: TRIGGERS_DOCKER_CONFIG: {config}")
    assert words in done.stderr
    assert "Traceback" not in done.stderr


def test_malformed_docker_host_stops_worker_start(env: dict[str, str]) -> None:
    """A TRIGGERS_DOCKER_HOST part without a URL exits 1 with what to fix, not a traceback."""
    done = subprocess.run(
        [*triggers_cli(), "worker"],
        env=env | {"TRIGGERS_ORCHESTRATOR": "swarm", "TRIGGERS_DOCKER_HOST": "prod="},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("Error: TRIGGERS_DOCKER_HOST must be a URL or cluster=url")
    assert "'prod='" in done.stderr
    assert "Traceback" not in done.stderr
