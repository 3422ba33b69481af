"""The Docker Registry itself (``docker-registry``) notifying a trigger, pushed to with
``skopeo`` from OCI layouts the test builds: what real pushes, pulls and deletes do.

The registry runs on 127.0.0.1 with its own config and storage, its notification
endpoint pointing at the trigger with ``Authorization: Bearer <secret>``; the gateway,
worker and local cluster run in the test. Every call the registry makes is seen on the
gateway's ``gateway.request`` line.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.settings import Settings
from shared.store import SqliteTriggerStore
from tests.real.daemons import HookCalls, hook_calls, running_daemon
from tests.real.oci import oci_layout
from tests.support.dockerd import free_port_below_ephemeral
from tests.support.gateways import ADMIN_TOKEN, Gateway
from tests.support.workers import Results
from tests.test_event_calls import image_trigger
from workers.orchestrators.local import LocalOrchestrator
from workers.worker import Worker

pytestmark = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo")),
    reason="needs docker-registry and skopeo (.ci/run installs them)",
)


@dataclass
class Registry:
    """A running registry and the repository the trigger is bound to."""

    host: str
    repository: str
    work: Path
    trigger_id: str

    def push(self, layout: Path, tag: str, *, to_tag: str | None = None) -> None:
        """``skopeo copy [--all] oci:LAYOUT:TAG docker://REPOSITORY:TO_TAG``."""
        _skopeo(
            "copy",
            "--all",
            "--dest-tls-verify=false",
            f"oci:{layout}:{tag}",
            f"docker://{self.repository}:{to_tag or tag}",
        )

    def pull(self, tag: str) -> None:
        """Read the manifest, as a pull does (``skopeo inspect``)."""
        _skopeo("inspect", "--tls-verify=false", f"docker://{self.repository}:{tag}")

    def delete(self, digest: str) -> None:
        """Delete a manifest by digest."""
        _skopeo("delete", "--tls-verify=false", f"docker://{self.repository}@{digest}")


def _skopeo(*args: str) -> None:
    done = subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This module's gateway serves the admin API (to disable and enable the trigger)."""
    return settings.with_(admin_token=ADMIN_TOKEN)


@pytest.fixture
async def registry(
    tmp_path: Path, gateway: Gateway, store: SqliteTriggerStore, cluster: LocalOrchestrator
) -> AsyncIterator[Registry]:
    """docker-registry with a notifications endpoint at a trigger bound to its team/api,
    and service ``api`` of demo/shop running team/api:0.9."""
    port = free_port_below_ephemeral()
    repository = f"127.0.0.1:{port}/team/api"
    cluster.cluster.set_service("demo", "shop", "api", replicas=1, image=f"{repository}:0.9")
    trigger, secret = await image_trigger(store, repository)
    url, _, _ = gateway.call_url(trigger, secret).partition("&secret=")
    config = tmp_path / "registry.yml"
    config.write_text(
        f"""version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {tmp_path / "storage"}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
notifications:
  endpoints:
    - name: trigger
      url: "{url}"
      headers:
        Authorization: ["Bearer {secret}"]
      timeout: 5s
      threshold: 3
      backoff: 1s
"""
    )
    async with running_daemon(
        ["docker-registry", "serve", str(config)],
        tmp_path / "registry.log",
        f"http://127.0.0.1:{port}/v2/",
    ):
        yield Registry(
            host=f"127.0.0.1:{port}", repository=repository, work=tmp_path, trigger_id=trigger.id
        )


async def _deployed(results: Results, calls: HookCalls, count: int) -> list[str]:
    """The images of the first `count` accepted calls, once their jobs have run."""
    accepted = await calls.wait(count, outcome="accepted")
    images = []
    for line in accepted[:count]:
        (event,) = await results.wait_for(line["job_id"])
        assert event.status == "succeeded", event.error
        images.append(event.after["api"].image)
    return images


async def test_single_platform_pushes_tags_pulls_and_deletes(
    registry: Registry, cluster: LocalOrchestrator, worker: Worker, results: Results
) -> None:
    """A push deploys once; a second tag of the digest does not; a new digest under the
    same tag rolls; a pull and a delete change nothing; every call is answered 2xx."""
    with hook_calls() as calls:
        first = oci_layout(registry.work / "one", "1.0", seed="one")
        registry.push(registry.work / "one", "1.0")
        assert await _deployed(results, calls, 1) == [f"{registry.repository}:1.0@{first}"]

        registry.push(registry.work / "one", "1.0", to_tag="1.0-again")
        await calls.wait(reason="duplicate_image")

        second = oci_layout(registry.work / "two", "1.0", seed="two")
        registry.push(registry.work / "two", "1.0")
        assert (await _deployed(results, calls, 2))[1] == f"{registry.repository}:1.0@{second}"

        registry.pull("1.0")
        await calls.wait(reason="not_a_push", about="pull event")
        registry.delete(first)
        await calls.wait(reason="not_a_push", about="delete event")

        assert len(calls.where(outcome="accepted")) == 2
        assert all(200 <= line["status"] < 300 for line in calls.lines)
    api = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]["api"]
    assert (api["image"], api["revision"]) == (f"{registry.repository}:1.0@{second}", 3)


async def test_multi_platform_push_deploys_once_to_the_index(
    registry: Registry, worker: Worker, results: Results
) -> None:
    """A two-platform index: the platform manifests (pushed by digest) are ignored and the
    index deploys once, to tag@index digest."""
    with hook_calls() as calls:
        index = oci_layout(
            registry.work / "multi", "2.0", seed="multi", platforms=("linux/amd64", "linux/arm64")
        )
        registry.push(registry.work / "multi", "2.0")
        assert await _deployed(results, calls, 1) == [f"{registry.repository}:2.0@{index}"]
        assert len(calls.where(reason="digest_only")) == 2
        # A second tag of the whole index: its manifests and the index again, nothing deploys.
        registry.push(registry.work / "multi", "2.0", to_tag="stable")
        await calls.wait(reason="duplicate_image")
        assert len(calls.where(outcome="accepted")) == 1


async def test_a_disabled_trigger_neither_stalls_the_registry_nor_replays_later(
    registry: Registry, gateway: Gateway, worker: Worker, results: Results
) -> None:
    """A push while the trigger is disabled is answered 200 trigger_disabled (the registry
    retries any error forever, holding back its later events); once enabled, the next
    push deploys and the dropped one never does."""
    path = f"/v1/triggers/{registry.trigger_id}"
    with hook_calls() as calls:
        assert (await gateway.admin("PATCH", path, {"enabled": False}))[0] == 200
        oci_layout(registry.work / "dropped", "1.1", seed="dropped")
        registry.push(registry.work / "dropped", "1.1")
        await calls.wait(reason="trigger_disabled")

        assert (await gateway.admin("PATCH", path, {"enabled": True}))[0] == 200
        kept = oci_layout(registry.work / "kept", "1.2", seed="kept")
        registry.push(registry.work / "kept", "1.2")
        assert await _deployed(results, calls, 1) == [f"{registry.repository}:1.2@{kept}"]
        assert all(200 <= line["status"] < 300 for line in calls.lines)
