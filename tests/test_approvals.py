"""Approvals: a call to a trigger with --approvals is held (202 pending_approval, nothing
published) until people approve it through the CLI, the admin API or a signed link; a
rejection or a timeout gives a `rejected` / `expired` result everyone sees."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.broker import AmqpBus
from shared.jobs import JobStore
from shared.notify_store import NotifyStore, SinkCreate, open_notify_store
from shared.settings import Settings
from shared.store import TriggerStore
from shared.topology import COMMAND_QUEUES
from tests.notify_support import receiver, running_notifier
from tests.support.broker import queue_depth
from tests.support.cli import run_cli
from tests.support.databases import on_both_databases
from tests.support.gateways import ADMIN_TOKEN, Gateway, running_gateways
from tests.support.workers import Results, recorded

pytestmark = pytest.mark.slow

SCALE_QUEUE = COMMAND_QUEUES["scale"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The admin API on; held calls checked for their timeout often."""
    return settings.with_(admin_token=ADMIN_TOKEN, approval_sweep_interval=0.1)


@pytest.fixture
async def notify_store(settings: Settings) -> AsyncIterator[NotifyStore]:
    """The test's sinks and approvals."""
    store = open_notify_store(settings.database)
    await store.start()
    yield store
    await store.close()


async def _held_trigger(gateway: Gateway, **policy: Any) -> dict[str, Any]:
    body = {"cluster": "demo", "app": "shop", "action": "scale", "service": "web", **policy}
    status, created = await gateway.admin("POST", "/v1/triggers", body)
    assert status == 201, created
    return dict(created)


async def _call(gateway: Gateway, created: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    url = f"{gateway.call_url_for(created)}&type=scale_out&step=1"
    async with gateway.http.post(url) as response:
        return response.status, await response.json()


@on_both_databases
async def test_held_call_answers_pending_and_publishes_nothing(
    gateway: Gateway, settings: Settings
) -> None:
    """202 with status pending_approval and a job id; no command queued; status_url says so."""
    created = await _held_trigger(gateway, approvals=1, approval_timeout=600)
    assert (created["approvals"], created["approval_timeout"]) == (1, 600)
    status, answer = await _call(gateway, created)
    assert status == 202, answer
    assert answer["status"] == "pending_approval"
    assert answer["approvals_required"] == 1
    assert len(answer["job_id"]) == 32
    # 202 comes after the confirm of anything published: the queue is already as it will be.
    assert await queue_depth(settings.amqp_url, SCALE_QUEUE) == 0
    async with gateway.http.get(
        answer["status_url"].replace(settings.public_url, gateway.url)
    ) as r:
        job = await r.json()
    assert job["status"] == "pending_approval"
    status, listed = await gateway.admin("GET", "/v1/approvals")
    assert [a["job_id"] for a in listed["approvals"]] == [answer["job_id"]]


@on_both_databases
async def test_cli_approve_runs_the_original_job(
    gateway: Gateway,
    env: dict[str, str],
    results: Results,
    worker: Any,
    jobs: JobStore,
    recorder: Any,
) -> None:
    """`triggers approve PREFIX --as alice` publishes the command with the original job id."""
    created = await _held_trigger(gateway, approvals=1)
    _, answer = await _call(gateway, created)
    job_id = answer["job_id"]
    code, out, err = await run_cli(env, "approve", job_id[:10], "--as", "alice", "--json")
    assert code == 0, err
    assert '"state":"approved"' in out
    (event,) = await results.wait_for(job_id)
    assert event.status == "succeeded"
    assert event.after["web"].replicas == 3
    job = await recorded(jobs, job_id, "succeeded")
    assert job.accepted_at is not None
    code, _, err = await run_cli(env, "approve", job_id, "--as", "bob")
    assert code == 1
    assert "already approved" in err


@on_both_databases
async def test_two_gateways_approving_at_once_publish_once(
    settings: Settings, store: TriggerStore, bus: AmqpBus
) -> None:
    """Ten held calls, each approved through two gateways at the same moment: each is
    published exactly once (one 200, one 409 per call)."""
    async with running_gateways(settings, store, bus, 2) as (one, two):
        created = await _held_trigger(one, approvals=1)
        held = [(await _call(one, created))[1]["job_id"] for _ in range(10)]
        for job_id in held:
            answers = await asyncio.gather(
                one.admin("POST", f"/v1/approvals/{job_id}/approve", {"approver": "ann"}),
                two.admin("POST", f"/v1/approvals/{job_id}/approve", {"approver": "ben"}),
            )
            assert sorted(status for status, _ in answers) == [200, 409], answers
        assert await queue_depth(settings.amqp_url, SCALE_QUEUE) == 10


async def test_rejected_call_gives_a_rejected_result(
    gateway: Gateway, results: Results, jobs: JobStore, recorder: Any, settings: Settings
) -> None:
    """A rejection never publishes the command; callers, history and tail see `rejected`."""
    created = await _held_trigger(gateway, approvals=2)
    _, answer = await _call(gateway, created)
    job_id = answer["job_id"]
    status, body = await gateway.admin(
        "POST", f"/v1/approvals/{job_id}/reject", {"reason": "freeze week", "approver": "carol"}
    )
    assert (status, body["state"], body["decided_by"]) == (200, "rejected", "carol")
    (event,) = await results.wait_for(job_id)
    assert event.status == "rejected"
    assert event.error == "rejected by carol: freeze week"
    job = await recorded(jobs, job_id, "rejected")
    assert job.result is not None
    assert await queue_depth(settings.amqp_url, SCALE_QUEUE) == 0
    status, body = await gateway.admin("POST", f"/v1/approvals/{job_id}/approve", {})
    assert (status, body["error"]) == (409, "not_pending")


async def test_unapproved_call_expires(
    gateway: Gateway, results: Results, settings: Settings
) -> None:
    """Not approved within --approval-timeout: the notifier expires it; an `expired` result."""
    created = await _held_trigger(gateway, approvals=1, approval_timeout=1)
    _, answer = await _call(gateway, created)
    async with running_notifier(settings):
        (event,) = await results.wait_for(answer["job_id"], within=15)
    assert event.status == "expired"
    status, body = await gateway.admin("POST", f"/v1/approvals/{answer['job_id']}/approve", {})
    assert (status, body["error"]) == (409, "not_pending")


async def test_distinct_approvers_and_policy_at_approval_time(
    gateway: Gateway, settings: Settings
) -> None:
    """Two approvals need two people; a trigger disabled meanwhile cannot be approved through."""
    created = await _held_trigger(gateway, approvals=2)
    _, first = await _call(gateway, created)
    _, second = await _call(gateway, created)
    path = f"/v1/approvals/{first['job_id']}/approve"
    status, body = await gateway.admin("POST", path, {"approver": "ann"})
    assert (status, body["state"], body["approvers"]) == (200, "pending", ["ann"])
    status, body = await gateway.admin("POST", path, {"approver": "ann"})
    assert (status, body["error"]) == (409, "already_approved")
    status, body = await gateway.admin("POST", path, {"approver": "ben"})
    assert (status, body["state"]) == (200, "approved")
    assert await queue_depth(settings.amqp_url, SCALE_QUEUE) == 1
    await gateway.admin("PATCH", f"/v1/triggers/{created['id']}", {"enabled": False})
    status, body = await gateway.admin(
        "POST", f"/v1/approvals/{second['job_id']}/approve", {"approver": "ann"}
    )
    assert (status, body["error"]) == (409, "trigger_inactive")
    assert await queue_depth(settings.amqp_url, SCALE_QUEUE) == 1


async def test_held_call_survives_a_gateway_restart(
    settings: Settings, store: TriggerStore, bus: AmqpBus
) -> None:
    """A call held by one gateway, which then stops, is approved through a new one."""
    async with running_gateways(settings, store, bus, 1) as (first,):
        created = await _held_trigger(first, approvals=1)
        _, answer = await _call(first, created)
    async with running_gateways(settings, store, bus, 1) as (second,):
        status, body = await second.admin(
            "POST", f"/v1/approvals/{answer['job_id'][:8]}/approve", {"approver": "dan"}
        )
    assert (status, body["state"]) == (200, "approved")
    assert await queue_depth(settings.amqp_url, SCALE_QUEUE) == 1


async def test_approval_link_in_notification_is_signed_and_single_use(
    gateway: Gateway, notify_store: NotifyStore, settings: Settings
) -> None:
    """The pending notification carries a link; opening it decides nothing, its form approves
    once with the name given, a second use or a forged token is refused."""
    async with receiver() as hook:
        await notify_store.create_sink(SinkCreate(name="hook", type="webhook", url=hook.url))
        created = await _held_trigger(gateway, approvals=1, notify=["hook"])
        async with running_notifier(settings):
            _, answer = await _call(gateway, created)
            await hook.wait_for(1)
    (message,) = hook.bodies()
    assert message["type"] == "job.pending_approval"
    link = message["data"]["approval_url"].replace(settings.public_url, gateway.url)
    token = parse_qs(urlsplit(link).query)["token"][0]
    async with gateway.http.get(link) as page:
        assert page.status == 200
        assert "Approve this change?" in await page.text()
    _status, body = await gateway.admin("GET", f"/v1/approvals/{answer['job_id']}")
    assert body["state"] == "pending"  # opening the link (a preview) decided nothing
    form = {"token": token, "name": "erin", "decision": "approve"}
    async with gateway.http.post(f"{gateway.url}/approvals/link", data=form) as page:
        assert page.status == 200, await page.text()
    _, body = await gateway.admin("GET", f"/v1/approvals/{answer['job_id']}")
    assert (body["state"], body["approvers"]) == ("approved", ["erin (link sent to hook)"])
    async with gateway.http.post(f"{gateway.url}/approvals/link", data=form) as page:
        assert page.status == 409
    forged = {**form, "token": token[:-2] + ("AA" if not token.endswith("AA") else "BB")}
    async with gateway.http.post(f"{gateway.url}/approvals/link", data=forged) as page:
        assert page.status == 403
    assert await queue_depth(settings.amqp_url, SCALE_QUEUE) == 1


async def test_cli_with_server_manages_sinks_and_decides(
    gateway: Gateway, env: dict[str, str], settings: Settings
) -> None:
    """`--server`: sink create (secret once), approvals list, approve, reject through a gateway."""
    remote = {**env, "TRIGGERS_ADMIN_TOKEN": ADMIN_TOKEN, "TRIGGERS_DATABASE": "sqlite:///nowhere"}
    server = f"--server={gateway.url}"
    code, out, err = await run_cli(
        remote, "sink", "create", "--name", "hook", "--type", "webhook",
        "--url", "http://127.0.0.1:9/h", server, "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["secret"].startswith("whsec_")
    created = await _held_trigger(gateway, approvals=1, notify=["hook"])
    _, first = await _call(gateway, created)
    _, second = await _call(gateway, created)
    code, out, err = await run_cli(remote, "approvals", server, "--json")
    assert code == 0, err
    assert {a["job_id"] for a in json.loads(out)} == {first["job_id"], second["job_id"]}
    code, out, err = await run_cli(remote, "approve", first["job_id"], "--as", "fay", server)
    assert code == 0, err
    assert "the command is published" in out
    code, out, err = await run_cli(
        remote, "reject", second["job_id"][:6], "--reason", "not now", server, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["state"] == "rejected"
    assert await queue_depth(settings.amqp_url, SCALE_QUEUE) == 1
