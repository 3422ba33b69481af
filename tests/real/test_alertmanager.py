"""Prometheus Alertmanager itself (``prometheus-alertmanager``, alerts sent with ``amtool``)
notifying a scale trigger with --scale-in-on-resolve through a webhook receiver
(``http_config.authorization``): a group firing, repeating, growing, resolving and firing
again acts exactly as docs/senders.md says, and the service ends where it started.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.store import SqliteTriggerStore
from shared.triggers import TriggerOptions
from tests.real.daemons import HookCalls, hook_calls, running_daemon
from tests.support.dockerd import free_port_below_ephemeral
from tests.support.gateways import Gateway
from tests.support.workers import Results
from workers.orchestrators.local import LocalOrchestrator
from workers.worker import Worker

pytestmark = pytest.mark.skipif(
    not (shutil.which("prometheus-alertmanager") and shutil.which("amtool")),
    reason="needs prometheus-alertmanager and amtool (.ci/run installs them)",
)


@dataclass
class Alertmanager:
    """A running Alertmanager: raise and end alerts of the group ``HighLoad``."""

    url: str

    def fire(self, instance: str) -> None:
        """``amtool alert add alertname=HighLoad instance=...``."""
        self._amtool(instance)

    def end(self, instance: str) -> None:
        """The same alert with its end time now: resolved."""
        self._amtool(instance, f"--end={datetime.now(UTC).isoformat(timespec='seconds')}")

    def _amtool(self, instance: str, *extra: str) -> None:
        done = subprocess.run(
            [
                "amtool",
                "alert",
                "add",
                "alertname=HighLoad",
                f"instance={instance}",
                *extra,
                f"--alertmanager.url={self.url}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr


@pytest.fixture
async def alertmanager(
    tmp_path: Path, gateway: Gateway, store: SqliteTriggerStore
) -> AsyncIterator[Alertmanager]:
    """Alertmanager with one webhook receiver: a scale trigger of web, step 2."""
    trigger, secret = await store.create(
        cluster="demo",
        app="shop",
        action="scale",
        service="web",
        options=TriggerOptions(step=2, scale_in_on_resolve=True),
    )
    url, _, _ = gateway.call_url(trigger, secret).partition("&secret=")
    port = free_port_below_ephemeral()
    config = tmp_path / "alertmanager.yml"
    # Short intervals so that a test sees repeats: every group flush is a notification.
    config.write_text(
        f"""route:
  receiver: trigger
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: trigger
    webhook_configs:
      - url: "{url}"
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials: "{secret}"
"""
    )
    async with running_daemon(
        [
            "prometheus-alertmanager",
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        tmp_path / "alertmanager.log",
        f"http://127.0.0.1:{port}/-/ready",
    ):
        yield Alertmanager(url=f"http://127.0.0.1:{port}")


async def _replicas(results: Results, calls: HookCalls, count: int) -> list[tuple[int, int]]:
    """(before, after) replicas of web for the first `count` accepted calls, once run."""
    moves = []
    for line in (await calls.wait(count, outcome="accepted"))[:count]:
        (event,) = await results.wait_for(line["job_id"])
        assert event.status == "succeeded", event.error
        moves.append((event.before["web"].replicas, event.after["web"].replicas))
    return moves


async def test_fire_repeat_grow_resolve_fire_resolve(
    alertmanager: Alertmanager, cluster: LocalOrchestrator, worker: Worker, results: Results
) -> None:
    """One scale-out per firing episode however often it repeats or grows, one scale-in
    when the whole group resolves, again for the next episode: web ends at 2 replicas."""
    with hook_calls() as calls:
        alertmanager.fire("a")
        assert await _replicas(results, calls, 1) == [(2, 4)]
        await calls.wait(reason="alert_repeat")  # repeat_interval: the same group again

        alertmanager.fire("b")  # the group grows: a new notification, same episode
        repeats = len(calls.where(reason="alert_repeat"))
        alertmanager.end("a")  # b still fires: the group is still firing
        await calls.wait(repeats + 1, reason="alert_repeat")
        assert len(calls.where(outcome="accepted")) == 1

        alertmanager.end("b")  # the whole group resolves: scale in by the same step
        assert (await _replicas(results, calls, 2))[1] == (4, 2)

        alertmanager.fire("a")  # a new episode
        assert (await _replicas(results, calls, 3))[2] == (2, 4)
        alertmanager.end("a")
        assert (await _replicas(results, calls, 4))[3] == (4, 2)
        assert all(200 <= line["status"] < 300 for line in calls.lines)
    web = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]["web"]
    assert web["replicas"] == 2
