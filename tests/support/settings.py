"""The test's settings and the environment a `triggers` subprocess needs to share them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.support.unit_lane import CLOSED_AMQP_URL, is_unit

__all__: list[str] = []


@pytest.fixture
def settings(tmp_path: Path, database_url: str, request: pytest.FixtureRequest) -> Settings:
    """Settings pointing at this test's files and database and the session's vhost.

    A `unit` test gets a broker URL nothing answers on instead of a vhost: it runs on the
    in-process bus, and the unit lane's guard fails it if anything dials the URL.
    """
    amqp_url = CLOSED_AMQP_URL if is_unit(request.node) else request.getfixturevalue("amqp_url")
    return Settings(
        amqp_url=amqp_url,
        database=database_url,
        local_state=str(tmp_path / "local-cluster.db"),
        public_url="http://127.0.0.1:8080",
        log_format="json",
        trigger_cache_ttl=1.0,
        retry_delays=(0.05, 0.1, 0.2),
        shutdown_timeout=5.0,
        audit_flush_interval=0.05,
    )


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """The environment a `triggers` subprocess needs to share this test's state."""
    return {
        **os.environ,
        "TRIGGERS_AMQP_URL": settings.amqp_url,
        "TRIGGERS_DATABASE": settings.database,
        "TRIGGERS_LOCAL_STATE": settings.local_state,
        "TRIGGERS_PUBLIC_URL": settings.public_url,
        "TRIGGERS_LOG_FORMAT": "json",
    }
