"""Rotation with overlap, and an audit trail without secrets."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

import pytest
from structlog.testing import capture_logs

from shared.messages import utcnow
from shared.settings import Settings
from shared.store import SqliteTriggerStore
from tests.support.cli import run_cli
from tests.support.gateways import ADMIN_TOKEN, Gateway
from tests.support.waiting import eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This module's gateways serve the admin API."""
    return settings.with_(admin_token=ADMIN_TOKEN)


async def _status(gateway: Gateway, url: str, method: str = "GET") -> int:
    async with gateway.http.request(
        method, url, headers={"User-Agent": "ci-runner/1.0"}
    ) as response:
        return response.status


async def test_old_and_new_secret_work_during_grace_only_new_after(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """After rotate the new secret works at once, the old one until the grace ends, then 403."""
    trigger, old = await store.create(cluster="demo", app="shop", action="redeploy")
    assert await _status(gateway, gateway.call_url(trigger, old)) == 202
    status, rotated = await gateway.admin("POST", f"/v1/triggers/{trigger.id}/rotate", {"grace": 1})
    assert status == 200, rotated
    new = rotated["secret"]
    assert await _status(gateway, gateway.call_url(trigger, new)) == 202
    assert await _status(gateway, gateway.call_url(trigger, old)) == 202

    assert datetime.fromisoformat(rotated["previous_secret_expires_at"]) > utcnow()

    async def old_refused() -> bool | None:
        return True if await _status(gateway, gateway.call_url(trigger, old)) == 403 else None

    await eventually(old_refused, what="the end of the grace", within=10)
    assert await _status(gateway, gateway.call_url(trigger, new)) == 202


async def test_rotation_by_another_process_is_honoured_at_once(
    gateway: Gateway, store: SqliteTriggerStore, env: dict[str, str]
) -> None:
    """A rotation made with the CLI works on a running gateway that has the trigger cached."""
    trigger, old = await store.create(cluster="demo", app="shop", action="redeploy")
    assert await _status(gateway, gateway.call_url(trigger, old)) == 202
    code, out, err = await run_cli(env, "rotate", trigger.id, "--grace", "300", "--json")
    assert code == 0, err
    rotated = json.loads(out)
    assert rotated["url"].endswith(f"secret={rotated['secret']}")
    assert await _status(gateway, gateway.call_url(trigger, rotated["secret"])) == 202
    assert await _status(gateway, gateway.call_url(trigger, old)) == 202


async def test_audit_records_every_outcome_and_never_a_secret(
    gateway: Gateway, store: SqliteTriggerStore, settings: Settings
) -> None:
    """Accepted, rejected and ignored calls are audited with caller and reason; no secret
    reaches the store or the logs, not even one put in the wrong parameter."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="scale", service="web")
    url = gateway.call_url(trigger, secret)
    with capture_logs() as logs:
        assert await _status(gateway, url + "&type=scale_out&step=1", "POST") == 202
        assert await _status(gateway, url + "&type=scale_out&step=0") == 400
        assert await _status(gateway, url + f"&type={secret}&step=1") == 400
        assert await _status(gateway, url.replace(secret, secret[::-1]) + "&step=1") == 403
        status, rotated = await gateway.admin("POST", f"/v1/triggers/{trigger.id}/rotate", {})
        assert status == 200
        await gateway.admin("PATCH", f"/v1/triggers/{trigger.id}", {"cooldown": 60})
        new_url = gateway.call_url(trigger, rotated["secret"]) + "&type=scale_out&step=1"
        assert await _status(gateway, new_url) == 202
        assert await _status(gateway, new_url) == 200
        status, audit = await gateway.admin("GET", f"/v1/audit?trigger_id={trigger.id}")
        assert status == 200

    entries = audit["entries"]
    assert [(e["outcome"], e["status"], e["reason"]) for e in entries] == [
        ("ignored", 200, "cooldown"),
        ("accepted", 202, None),
        ("rejected", 403, "forbidden"),
        ("rejected", 400, "invalid_type"),
        ("rejected", 400, "invalid_step"),
        ("accepted", 202, None),
    ]
    assert all(e["remote"] == "127.0.0.1" for e in entries)
    assert all(e["user_agent"] == "ci-runner/1.0" for e in entries)
    assert entries[1]["job_id"]
    assert entries[0]["detail"].startswith(f"trigger {trigger.id} ran less than 60 s ago")

    conn = sqlite3.connect(settings.database.removeprefix("sqlite:///"))
    try:
        stored = "\n".join(
            repr(row)
            for table in ("triggers", "audit")
            for row in conn.execute(f"SELECT * FROM {table}")  # noqa: S608 - constant names
        )
    finally:
        conn.close()
    logged = repr(logs)
    for value in (secret, secret[:24], secret[::-1], rotated["secret"]):
        assert value not in stored
        assert value not in logged
    assert "gateway.request" in logged
    assert "[hex value masked]" in entries[3]["detail"]
