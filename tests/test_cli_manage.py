"""The management CLI, on the local store and against a running gateway (--server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.settings import Settings
from tests.support.cli import run_cli
from tests.support.gateways import ADMIN_TOKEN, Gateway


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This module's gateways serve the admin API."""
    return settings.with_(admin_token=ADMIN_TOKEN)


async def _json(env: dict[str, str], *args: str) -> Any:
    code, out, err = await run_cli(env, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_local_store_lifecycle(env: dict[str, str], gateway: Gateway) -> None:
    """create/list/show/update/rotate/revoke/audit on the local store, readable and --json.

    `create --json` prints the same object as POST /v1/triggers.
    """
    created = await _json(
        env,
        "create",
        "--cluster=demo",
        "--app=shop",
        "--action=scale",
        "--service=web",
        "--min-replicas=1",
        "--max-replicas=5",
        "--cooldown=30",
        "--rate-limit=60",
        "--expires-in=3600",
        "--methods=POST",
    )
    _, from_api = await gateway.admin(
        "POST", "/v1/triggers", {"cluster": "demo", "app": "shop", "action": "redeploy"}
    )
    assert set(created) == set(from_api)
    assert (created["min_replicas"], created["max_replicas"], created["cooldown"]) == (1, 5, 30)
    assert (created["rate_limit"], created["allowed_methods"]) == (60, ["POST"])
    assert created["url"].endswith(created["secret"])
    trigger_id = created["id"]

    code, table, _ = await run_cli(env, "list")
    assert code == 0
    assert "POLICY" in table
    assert trigger_id in table
    assert "replicas 1..5, cooldown 30s, 60/min, POST only, expires" in table
    listed = await _json(env, "list", "--action=scale")
    assert [t["id"] for t in listed] == [trigger_id]
    assert "secret" not in listed[0]

    shown = await _json(env, "show", trigger_id)
    assert shown == {k: v for k, v in created.items() if k not in ("url", "secret")}

    updated = await _json(env, "update", trigger_id, "--disable", "--max-replicas=none")
    assert (updated["status"], updated["max_replicas"], updated["min_replicas"]) == (
        "disabled",
        None,
        1,
    )
    rotated = await _json(env, "rotate", trigger_id, "--grace=60")
    assert rotated["secret"] != created["secret"]
    assert rotated["url"].endswith(rotated["secret"])
    code, out, _ = await run_cli(env, "revoke", trigger_id)
    assert (code, out.strip()) == (0, f"Revoked {trigger_id}.")
    code, _, err = await run_cli(env, "rotate", trigger_id)
    assert code == 1
    assert "revoked" in err
    assert await _json(env, "audit", "--trigger", trigger_id) == []


async def test_bad_flags_are_usage_errors(env: dict[str, str]) -> None:
    """Out-of-range or contradictory flags exit 2 with a message naming the problem."""
    base = ["create", "--cluster=demo", "--app=shop", "--action=scale", "--service=web"]
    code, _, err = await run_cli(env, *base, "--cooldown=-5")
    assert code == 2
    assert "--cooldown" in err
    code, _, err = await run_cli(env, *base, "--min-replicas=5", "--max-replicas=2")
    assert code == 2
    assert "above max_replicas" in err
    code, _, err = await run_cli(env, "update", "abcdefgh12")
    assert code == 2
    assert "nothing to change" in err
    code, _, err = await run_cli(env, "show", "abcdefgh12")
    assert code == 1
    assert "no trigger" in err


async def test_remote_server_lifecycle(env: dict[str, str], gateway: Gateway) -> None:
    """The same commands with --server work through the admin API, token from the environment."""
    remote = {
        **env,
        "TRIGGERS_ADMIN_TOKEN": ADMIN_TOKEN,
        "TRIGGERS_DATABASE": "sqlite:///unused.db",
    }
    server = f"--server={gateway.url}"
    created = await _json(
        remote,
        "create",
        server,
        "--cluster=demo",
        "--app=shop",
        "--action=redeploy",
        "--cooldown=3600",  # the rotated call below falls within it however slow the CLI starts
    )
    trigger_id = created["id"]
    assert created["url"].startswith(gateway.settings.public_url)
    async with gateway.http.get(gateway.call_url_for(created)) as response:
        assert response.status == 202

    code, table, err = await run_cli(remote, "list", server)
    assert code == 0, err
    assert trigger_id in table
    updated = await _json(remote, "update", trigger_id, server, "--rate-limit=10")
    assert updated["rate_limit"] == 10
    rotated = await _json(remote, "rotate", trigger_id, server, "--grace=0")
    async with gateway.http.get(gateway.call_url_for(created)) as response:
        assert response.status == 403
    async with gateway.http.get(gateway.call_url_for(rotated)) as response:
        assert response.status == 200  # within the cooldown: ignored, not refused
    audit = await _json(remote, "audit", server, "--trigger", trigger_id)
    assert [e["outcome"] for e in audit] == ["ignored", "rejected", "accepted"]
    revoked = await _json(remote, "revoke", trigger_id, server)
    assert revoked["status"] == "revoked"

    code, _, err = await run_cli(
        {**remote, "TRIGGERS_ADMIN_TOKEN": "wrong-admin-token-0123456789"}, "list", server
    )
    assert code == 1
    assert "TRIGGERS_ADMIN_TOKEN" in err


async def test_request_id_idempotency_is_set_by_cli_and_admin_api(
    env: dict[str, str], gateway: Gateway
) -> None:
    """`--request-id-idempotency` and the API's `request_id_idempotency` set, show and clear it."""
    created = await _json(
        env, "create", "--cluster=demo", "--app=shop", "--action=redeploy",
        "--request-id-idempotency",
    )  # fmt: skip
    assert created["request_id_idempotency"] is True
    shown = await _json(env, "show", created["id"])
    assert shown["request_id_idempotency"] is True
    code, table, _ = await run_cli(env, "list")
    assert code == 0
    assert "X-Request-ID is the idempotency key" in table
    cleared = await _json(env, "update", created["id"], "--no-request-id-idempotency")
    assert cleared["request_id_idempotency"] is False
    path = f"/v1/triggers/{created['id']}"
    status, patched = await gateway.admin("PATCH", path, {"request_id_idempotency": True})
    assert (status, patched["request_id_idempotency"]) == (200, True)
    _, other = await gateway.admin(
        "POST", "/v1/triggers", {"cluster": "demo", "app": "shop", "action": "redeploy"}
    )
    assert other["request_id_idempotency"] is False
