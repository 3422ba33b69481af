"""Trigger options for pushes, alerts and signatures: the CLI, the store and its migration."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from shared.store import SqliteTriggerStore
from shared.triggers import TriggerOptions
from tests.support.cli import triggers_cli


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*triggers_cli(), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_create_binds_image_filter_and_signature_and_shows_the_key_once(
    env: dict[str, str],
) -> None:
    """`triggers create --image --tags --signature` stores them; the signing key shows only at creation."""
    created = _cli(
        env,
        "create",
        "--cluster=demo",
        "--app=shop",
        "--action=redeploy",
        "--image=svendowideit/testhook",
        "--tags=v1.*",
        "--signature=github",
        "--header-secret-only",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    data = json.loads(created.stdout)
    assert data["image_update"] is True
    assert data["options"] == {
        "image": "svendowideit/testhook",
        "tags": "v1.*",
        "signature": "github",
        "header_secret_only": True,
    }
    assert len(data["signing_secret"]) == 64
    shown = _cli(env, "show", data["id"], "--json")
    assert shown.returncode == 0, shown.stderr
    again = json.loads(shown.stdout)
    assert again["options"] == data["options"]
    assert "signing_secret" not in again
    assert data["signing_secret"] not in shown.stdout


def test_create_refuses_options_that_do_not_fit(env: dict[str, str]) -> None:
    """Bad combinations are usage errors naming the flag, and create nothing."""
    cases = [
        (["--action=scale", "--service=web", "--image=nginx"], "--image-update"),
        (["--action=redeploy", "--image=nginx", "--semver=one"], "not a version range"),
        (["--action=redeploy", "--step=3"], "scale triggers only"),
        (["--action=redeploy", "--signing-secret=k"], "--signature"),
    ]
    for flags, message in cases:
        result = _cli(env, "create", "--cluster=demo", "--app=shop", *flags)
        assert result.returncode == 2, (flags, result.stdout)
        assert message in result.stderr
    listed = _cli(env, "list", "--json")
    assert json.loads(listed.stdout) == []


@pytest.mark.unit
async def test_store_adds_the_options_column_to_an_older_file(tmp_path: Path) -> None:
    """A trigger file from before options gains the column on open and keeps its triggers."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE triggers (
            id TEXT PRIMARY KEY, cluster TEXT NOT NULL, app TEXT NOT NULL,
            action TEXT NOT NULL, service TEXT, image_update INTEGER NOT NULL DEFAULT 0,
            secret_hash TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT
        );
        INSERT INTO triggers VALUES
            ('oldtrigger0001', 'demo', 'shop', 'redeploy', NULL, 0, 'x', '2026-01-01T00:00:00+00:00', NULL);
        """
    )
    conn.commit()
    conn.close()
    store = SqliteTriggerStore(path)
    old = await store.get("oldtrigger0001")
    assert old is not None
    assert old.options == TriggerOptions()
    options = TriggerOptions(step=2, scale_in_on_resolve=True, cooldown=60)
    new, _ = await store.create(
        cluster="demo", app="shop", action="scale", service="web", options=options
    )
    fetched = await store.get(new.id)
    assert fetched is not None
    assert fetched.options == options


def test_header_secret_only_trigger_prints_a_curl_with_the_secret_in_a_header(
    env: dict[str, str],
) -> None:
    """A trigger refusing query secrets is printed with X-Trigger-Secret, never secret= in the URL."""
    created = _cli(
        env, "create", "--cluster=demo", "--app=shop", "--action=redeploy", "--header-secret-only"
    )
    assert created.returncode == 0, created.stderr
    (curl,) = [line.strip() for line in created.stdout.splitlines() if "curl" in line]
    assert curl.startswith("curl -X POST -H 'X-Trigger-Secret: ")
    assert "secret=" not in curl


def test_update_changes_alert_options_and_show_names_them(env: dict[str, str]) -> None:
    """`triggers update --step --alert-cooldown --scale-in-on-resolve` changes them; `show`
    prints each on its own line, apart from the policy's cooldown; 'none' clears."""
    created = _cli(
        env,
        "create",
        "--cluster=demo",
        "--app=shop",
        "--action=scale",
        "--service=web",
        "--cooldown=10",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    trigger_id = json.loads(created.stdout)["id"]
    updated = _cli(
        env, "update", trigger_id, "--step=3", "--alert-cooldown=45", "--scale-in-on-resolve"
    )
    assert updated.returncode == 0, updated.stderr
    # Under the flags' names, valued as the flags take them.
    assert "step:                       3" in updated.stdout
    assert "alert-cooldown:             45s" in updated.stdout
    assert "scale-in-on-resolve:        yes" in updated.stdout
    assert "cooldown:                   10s" in updated.stdout
    cleared = _cli(env, "update", trigger_id, "--alert-cooldown=none", "--no-scale-in-on-resolve")
    assert cleared.returncode == 0, cleared.stderr
    shown = json.loads(_cli(env, "show", trigger_id, "--json").stdout)
    assert shown["options"] == {"step": 3}
    refused = _cli(env, "update", trigger_id, "--step=101")
    assert refused.returncode == 2
    assert "--step" in refused.stderr
