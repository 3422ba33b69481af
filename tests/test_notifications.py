"""Notifications: sinks through the CLI and the admin API, the notifier against real local
receivers (a signature-verifying webhook, Slack and Teams stand-ins, an SMTP server), and
its failures (a sink that is down, a notifier killed mid-batch)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY
from standardwebhooks.webhooks import Webhook
from structlog.testing import capture_logs

from shared.broker import AmqpBus
from shared.messages import JobNotice, RolloutProgress, new_job_id
from shared.notify_store import NotifyStore, RouteCreate, SinkCreate, open_notify_store
from shared.policy import PolicyChanges
from shared.settings import Settings
from shared.store import TriggerStore
from shared.topology import DEAD_QUEUE
from tests.notify_support import receiver, running_notifier, smtp_server
from tests.support.broker import queue_depth
from tests.support.cli import run_cli, triggers_cli
from tests.support.databases import on_both_databases
from tests.support.gateways import ADMIN_TOKEN, Gateway
from tests.support.messages import result_event

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Fast retries for the notifier, and the admin API on."""
    return settings.with_(
        admin_token=ADMIN_TOKEN,
        notify_retry_delays=(0.05, 0.1),
        notify_max_attempts=3,
        approval_sweep_interval=0.2,
    )


@pytest.fixture
async def notify_store(settings: Settings) -> Any:
    """The test's sinks, routes and approvals."""
    store = open_notify_store(settings.database)
    await store.start()
    yield store
    await store.close()


async def _trigger_notifying(store: TriggerStore, *sinks: str) -> str:
    trigger, _ = await store.create(
        cluster="demo", app="shop", action="scale", service="web",
        policy=PolicyChanges(notify=list(sinks)),
    )  # fmt: skip
    return trigger.id


def _result(trigger_id: str, status: str = "succeeded") -> Any:
    import msgspec  # noqa: PLC0415

    event = result_event(new_job_id(), status=status)  # type: ignore[arg-type]  # a Status
    return msgspec.structs.replace(event, trigger_id=trigger_id)


def _delivered(kind: str, outcome: str) -> float:
    """The notifier's delivery counter in this process (its /metrics family)."""
    value = REGISTRY.get_sample_value(
        "triggers_notifier_deliveries_total", {"type": kind, "outcome": outcome}
    )
    return value or 0.0


@on_both_databases
async def test_sink_cli_shows_the_webhook_secret_once(env: dict[str, str]) -> None:
    """`sink create --json` gives a whsec_ secret; `sink list` never shows it or the URL's token."""
    code, out, err = await run_cli(
        env, "sink", "create", "--name", "hook", "--type", "webhook",
        "--url", "https://127.0.0.1:9/hooks/t0ken-in-path", "--json",
    )  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    assert created["secret"].startswith("whsec_")
    assert created["name"] == "hook"
    code, out, err = await run_cli(env, "sink", "list", "--json")
    assert code == 0, err
    (listed,) = json.loads(out)
    assert "secret" not in listed
    assert "t0ken" not in out
    assert listed["url"] == "https://127.0.0.1:9/…"
    code, _, err = await run_cli(
        env, "sink", "create", "--name", "mail", "--type", "email", "--url", "smtp://127.0.0.1:25"
    )
    assert code == 2
    assert "--to" in err


async def test_sink_admin_api(gateway: Gateway) -> None:
    """The admin API creates (201, secret once), refuses duplicates and bad sinks, lists, deletes."""
    body = {"name": "team", "type": "slack", "url": "https://127.0.0.1:9/services/T/B/x"}
    status, created = await gateway.admin("POST", "/v1/sinks", body)
    assert status == 201, created
    assert "secret" not in created  # only webhooks sign
    status, again = await gateway.admin("POST", "/v1/sinks", body)
    assert (status, again["error"]) == (409, "sink_exists")
    bad = {"name": "x", "type": "teams", "url": "ftp://127.0.0.1/x"}
    status, error = await gateway.admin("POST", "/v1/sinks", bad)
    assert (status, error["error"]) == (422, "invalid_body")
    status, listed = await gateway.admin("GET", "/v1/sinks")
    assert [s["name"] for s in listed["sinks"]] == ["team"]
    status, _ = await gateway.admin("GET", "/v1/sinks", token=None)
    assert status == 401
    # A trigger may name only sinks that exist.
    trigger = {"cluster": "demo", "app": "shop", "action": "redeploy", "notify": ["nope"]}
    status, error = await gateway.admin("POST", "/v1/triggers", trigger)
    assert status == 422
    assert "nope" in error["detail"]
    status, made = await gateway.admin("POST", "/v1/triggers", {**trigger, "notify": ["team"]})
    assert (status, made["notify"]) == (201, ["team"])
    status, route = await gateway.admin(
        "POST", "/v1/routes", {"sink": "team", "cluster": "prod*", "statuses": ["failed"]}
    )
    assert status == 201, route
    status, _ = await gateway.admin("DELETE", "/v1/sinks/team")
    assert status == 200
    status, routes = await gateway.admin("GET", "/v1/routes")
    assert routes["routes"] == []  # a sink's routes go with it
    status, error = await gateway.admin("DELETE", "/v1/sinks/team")
    assert (status, error["error"]) == (404, "sink_not_found")


@on_both_databases
async def test_results_reach_webhook_slack_and_teams(
    settings: Settings, store: TriggerStore, notify_store: NotifyStore, bus: AmqpBus
) -> None:
    """A result of a trigger with --notify reaches a signed webhook (verified with the
    standardwebhooks library), Slack (blocks) and Teams (an Adaptive Card), job id in each."""
    async with receiver() as hook, receiver() as slack, receiver() as teams:
        webhook = await notify_store.create_sink(
            SinkCreate(name="hook", type="webhook", url=hook.url)
        )
        await notify_store.create_sink(SinkCreate(name="slack", type="slack", url=slack.url))
        await notify_store.create_sink(SinkCreate(name="teams", type="teams", url=teams.url))
        assert webhook is not None
        assert webhook.secret is not None
        trigger_id = await _trigger_notifying(store, "hook", "slack", "teams")
        event = _result(trigger_id, "failed")
        async with running_notifier(settings):
            await bus.publish_result(event)
            await asyncio.gather(hook.wait_for(1), slack.wait_for(1), teams.wait_for(1))
    headers, body = hook.received[0]
    verified = Webhook(webhook.secret).verify(body, headers)
    assert verified["type"] == "job.failed"
    assert verified["data"]["job_id"] == event.job_id
    assert headers["webhook-id"] == f"msg_{event.job_id}_failed"
    (message,) = slack.bodies()
    assert event.job_id in message["text"]
    assert [b["type"] for b in message["blocks"]] == ["header", "section", "actions"]
    assert "2 x nginx:1.27 (rev 1) → 5 x nginx:1.27 (rev 1)" in message["blocks"][1]["text"]["text"]
    (card_message,) = teams.bodies()
    (attachment,) = card_message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert {"title": "job", "value": event.job_id} in card["body"][1]["facts"]
    assert {headers.get("X-Triggers-Job-Id") for headers, _ in slack.received + teams.received} == {
        event.job_id
    }


async def test_global_route_sends_only_matching_statuses(
    settings: Settings, store: TriggerStore, notify_store: NotifyStore, bus: AmqpBus
) -> None:
    """A route for failures of demo/* gets the failed result and not the succeeded one; a
    route naming `running` gets running notices (with the rollout's progress), which the
    trigger's own sinks do not, and not the progress updates that follow one."""
    async with receiver() as everything, receiver() as failures, receiver() as progress:
        await notify_store.create_sink(SinkCreate(name="all", type="slack", url=everything.url))
        await notify_store.create_sink(SinkCreate(name="oncall", type="slack", url=failures.url))
        await notify_store.create_sink(SinkCreate(name="live", type="teams", url=progress.url))
        await notify_store.add_route(
            RouteCreate(sink="oncall", cluster="demo", statuses=["failed"])
        )
        await notify_store.add_route(RouteCreate(sink="live", app="sh*", statuses=["running"]))
        trigger_id = await _trigger_notifying(store, "all")
        ok, bad = _result(trigger_id, "succeeded"), _result(trigger_id, "failed")
        notice = JobNotice(
            job_id=new_job_id(), trigger_id=trigger_id, action="redeploy", cluster="demo",
            app="shop", service="web", progress={"web": RolloutProgress(updated=1, total=3)},
        )  # fmt: skip
        update = msgspec.structs.replace(notice, job_id=new_job_id(), seq=1)
        with capture_logs() as logs:
            async with running_notifier(settings):
                await bus.publish_result(ok)
                await bus.publish_result(bad)
                await bus.publish_notice(update)  # before the one awaited below
                await bus.publish_notice(notice)
                await asyncio.gather(
                    everything.wait_for(2), failures.wait_for(1), progress.wait_for(1)
                )
    routed = {e["job_id"]: e["sinks"] for e in logs if e["event"] == "notifier.routed"}
    assert routed == {ok.job_id: ["all"], bad.job_id: ["all", "oncall"], notice.job_id: ["live"]}
    assert failures.job_ids() == [bad.job_id]
    assert progress.job_ids() == [notice.job_id]
    card = progress.bodies()[0]["attachments"][0]["content"]
    assert "running" in card["body"][0]["text"]
    assert {"title": "progress", "value": "1/3 updated"} in card["body"][1]["facts"]


async def test_email_over_starttls_with_login(
    settings: Settings, store: TriggerStore, notify_store: NotifyStore, bus: AmqpBus, tmp_path: Path
) -> None:
    """An email sink sends through a real SMTP server that requires STARTTLS and a login."""
    async with smtp_server(tmp_path, "mailer", "s3cret-pass") as mailbox:
        url = f"smtp://mailer:s3cret-pass@127.0.0.1:{mailbox.port}"
        await notify_store.create_sink(
            SinkCreate(name="mail", type="email", url=url, to=["ops@example.com"])
        )
        trigger_id = await _trigger_notifying(store, "mail")
        event = _result(trigger_id, "succeeded")
        async with running_notifier(settings.with_(smtp_cafile=mailbox.cafile)):
            await bus.publish_result(event)
            deadline = time.monotonic() + 20
            while not mailbox.messages and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    (mail,) = mailbox.messages
    assert mailbox.logins == ["mailer"]
    assert mail["To"] == "ops@example.com"
    assert mail["X-Triggers-Job-Id"] == event.job_id
    assert "scale of demo/shop/web succeeded" in mail["Subject"]
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert event.job_id.encode() in body


async def test_email_digest_lists_results_in_one_mail(
    settings: Settings, store: TriggerStore, notify_store: NotifyStore, bus: AmqpBus, tmp_path: Path
) -> None:
    """An email sink with --digest sends one mail listing the results of its interval."""
    async with smtp_server(tmp_path, "mailer", "pw") as mailbox:
        url = f"smtp://mailer:pw@127.0.0.1:{mailbox.port}"
        await notify_store.create_sink(
            SinkCreate(name="daily", type="email", url=url, to=["ops@example.com"], digest=2)
        )
        trigger_id = await _trigger_notifying(store, "daily")
        events = [_result(trigger_id, status) for status in ("succeeded", "failed", "skipped")]
        async with running_notifier(settings.with_(smtp_cafile=mailbox.cafile)):
            for event in events:
                await bus.publish_result(event)
            deadline = time.monotonic() + 30
            while not mailbox.messages and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    (mail,) = mailbox.messages
    assert sorted(mail["X-Triggers-Job-Ids"].split()) == sorted(e.job_id for e in events)
    assert "3 results (1 failed, 1 skipped, 1 succeeded)" in mail["Subject"]


async def test_sink_down_retries_then_dead_letters(
    settings: Settings,
    store: TriggerStore,
    notify_store: NotifyStore,
    bus: AmqpBus,
    env: dict[str, str],
) -> None:
    """A sink answering 503 is tried notify_max_attempts times through the delay queues, then
    the delivery is dead-lettered with the reason, which `triggers dlq list` shows; once the
    sink is back, `triggers dlq replay` delivers it."""
    async with receiver() as down:
        down.status = 503
        await notify_store.create_sink(SinkCreate(name="down", type="webhook", url=down.url))
        trigger_id = await _trigger_notifying(store, "down")
        event = _result(trigger_id, "failed")
        dead_before = _delivered("webhook", "dead_lettered")
        retried_before = _delivered("webhook", "retried")
        started = time.monotonic()
        with capture_logs() as logs:
            async with running_notifier(settings):
                await bus.publish_result(event)
                deadline = time.monotonic() + 30
                while await queue_depth(settings.amqp_url, DEAD_QUEUE) < 1:
                    assert time.monotonic() < deadline, "no dead letter"
                    await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        code, out, err = await run_cli(env, "dlq", "list", "--json")
        assert code == 0, err
        (dead,) = json.loads(out)  # a list is one JSON array
        down.status = 200
        async with running_notifier(settings):
            code, _, err = await run_cli(env, "dlq", "replay", dead["id"])
            assert code == 0, err
            await down.wait_for(1)
    assert down.job_ids() == [event.job_id]
    assert _delivered("webhook", "dead_lettered") == dead_before + 1
    assert _delivered("webhook", "retried") == retried_before + 2
    retries = [e for e in logs if e["event"] == "notifier.retry_scheduled"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert [e["wait_for"] for e in retries] == [0.05, 0.1]
    assert dead["reason"].startswith("notification to sink 'down' failed (gave up after 3")
    assert "HTTP 503" in dead["reason"]
    assert dead["attempts"] == 3
    assert (dead["cluster"], dead["app"], dead["replayable"]) == ("demo", "shop", True)
    assert event.job_id in dead["id"]
    print(f"sink down: 3 attempts, dead-lettered after {elapsed:.2f} s")


async def test_notify_test_cli(env: dict[str, str], notify_store: NotifyStore) -> None:
    """`triggers notify test SINK` sends a sample now; a sink that is down exits 1 with why."""
    async with receiver() as hook:
        await notify_store.create_sink(SinkCreate(name="hook", type="slack", url=hook.url))
        code, out, err = await run_cli(env, "notify", "test", "hook")
        assert code == 0, err
        assert len(hook.received) == 1
        assert "Sent a test notification" in out
        hook.status = 500
        code, _, err = await run_cli(env, "sink", "test", "hook")
    assert code == 1
    assert "HTTP 500" in err


async def test_notifier_killed_mid_batch_loses_nothing(
    settings: Settings,
    store: TriggerStore,
    notify_store: NotifyStore,
    bus: AmqpBus,
    env: dict[str, str],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """`triggers notifier` SIGKILLed while delivering a batch: a new one delivers every result
    at least once (receivers de-duplicate by job id)."""
    from tests.notify_support import purge_notifier_queues  # noqa: PLC0415

    count = 60
    async with receiver() as hook:
        hook.delay = 0.05  # slow enough that the kill lands mid-batch
        await notify_store.create_sink(SinkCreate(name="hook", type="webhook", url=hook.url))
        trigger_id = await _trigger_notifying(store, "hook")
        await purge_notifier_queues(settings.amqp_url)
        child_env = {**env, "TRIGGERS_NOTIFY_RETRY_DELAYS": "0.05,0.1"}

        def start() -> subprocess.Popen[bytes]:
            process = subprocess.Popen(
                [*triggers_cli(), "notifier"], env=child_env, stderr=subprocess.DEVNULL
            )
            processes.append(process)
            return process

        first = start()
        # Its queue must exist before results are published, or they would go nowhere.
        deadline = time.monotonic() + 30
        while True:
            try:
                await queue_depth(settings.amqp_url, "triggers.results.notifier")
                break
            except Exception:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        events = [_result(trigger_id) for _ in range(count)]
        for event in events:
            await bus.publish_result(event)
        await hook.wait_for(10, within=60)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        before_kill = len(hook.received)
        start()
        await hook.wait_for_jobs({e.job_id for e in events}, within=90)
    delivered = hook.job_ids()
    duplicates = len(delivered) - len(set(delivered))
    assert set(delivered) == {e.job_id for e in events}
    print(
        f"notifier SIGKILL: {count} results, {before_kill} delivered before the kill, "
        f"all {count} after restart, {duplicates} duplicates"
    )


@on_both_databases
async def test_http_call_to_notification_end_to_end(
    gateway: Gateway, worker: Any, notify_store: NotifyStore, settings: Settings
) -> None:
    """A trigger created with notify through the admin API, called over HTTP, run by a
    worker: its sink receives the result with the job id the 202 gave."""
    async with receiver() as hook:
        await notify_store.create_sink(SinkCreate(name="hook", type="webhook", url=hook.url))
        body = {"cluster": "demo", "app": "shop", "action": "redeploy", "notify": ["hook"]}
        status, created = await gateway.admin("POST", "/v1/triggers", body)
        assert status == 201, created
        async with running_notifier(settings):
            async with gateway.http.post(gateway.call_url_for(created)) as response:
                assert response.status == 202
                answer = await response.json()
            await hook.wait_for(1)
    (message,) = hook.bodies()
    assert message["type"] == "job.succeeded"
    assert message["data"]["job_id"] == answer["job_id"]
    assert message["data"]["after"]["web"]["revision"] == 2
