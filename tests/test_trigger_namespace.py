"""A trigger's Kubernetes namespace: stored, shown, validated, and added to older store files."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from shared.store import SqliteTriggerStore
from tests.support.cli import triggers_cli

_OLD_SCHEMA = """
CREATE TABLE triggers (
    id           TEXT PRIMARY KEY,
    cluster      TEXT NOT NULL,
    app          TEXT NOT NULL,
    action       TEXT NOT NULL CHECK (action IN ('redeploy', 'scale')),
    service      TEXT,
    image_update INTEGER NOT NULL DEFAULT 0,
    secret_hash  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);
INSERT INTO triggers (id, cluster, app, action, secret_hash, created_at)
VALUES ('oldtrigger0000000000000000', 'prod', 'shop', 'redeploy', 'x', '2026-01-01T00:00:00+00:00');
"""


@pytest.mark.unit
async def test_store_file_from_before_namespaces_gains_the_column(tmp_path: Path) -> None:
    """A store created before --namespace existed keeps its triggers (namespace None) and takes new ones."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_OLD_SCHEMA)
    store = SqliteTriggerStore(path)
    old = await store.get("oldtrigger0000000000000000")
    assert old is not None
    assert old.namespace is None
    created, _ = await store.create(
        cluster="prod", app="shop", action="redeploy", namespace="shop-prod"
    )
    again = await store.get(created.id)
    assert again is not None
    assert again.namespace == "shop-prod"


async def test_cli_shows_the_namespace_and_refuses_an_invalid_one(env: dict[str, str]) -> None:
    """`triggers create --namespace` stores it and `show --json` prints it; an invalid name is a usage error."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*triggers_cli(), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    made = await asyncio.to_thread(
        run,
        "create",
        "--cluster=prod",
        "--app=shop",
        "--action=redeploy",
        "--namespace=team-a",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    trigger_id = json.loads(made.stdout)["id"]
    shown = await asyncio.to_thread(run, "show", trigger_id, "--json")
    assert json.loads(shown.stdout)["namespace"] == "team-a"

    bad = await asyncio.to_thread(
        run, "create", "--cluster=prod", "--app=shop", "--action=redeploy", "--namespace=Team_A"
    )
    assert bad.returncode == 2
    assert "not a valid Kubernetes namespace" in bad.stderr
