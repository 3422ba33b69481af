"""Under attack from one address (500 slow-body connections, 1,000 bad calls a second), the
gateway keeps answering legitimate callers at that address and at another one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tests.conftest import created_scale_trigger, free_port, triggers_cli, wait_ready
from tests.hostile import attack

pytestmark = pytest.mark.slow

# Long enough for the slow connections to hit every deadline, short enough for CI.
ATTACK_SECONDS = 12.0


@pytest.fixture
async def gateway_on_localhost(env: dict[str, str]) -> AsyncIterator[int]:
    """`triggers gateway --host localhost`: on 127.0.0.1 and ::1, two client addresses."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *triggers_cli(),
        "gateway",
        "--host",
        "localhost",
        "--port",
        str(port),
        env={**env, "TRIGGERS_HEADER_TIMEOUT": "3", "TRIGGERS_BODY_TIMEOUT": "3"},
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
        yield port
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


async def test_legitimate_callers_are_served_during_an_attack_from_one_address(
    gateway_on_localhost: int, env: dict[str, str]
) -> None:
    """Every call with the right secret, from the attacking address or another, is a 202."""
    query = (await created_scale_trigger(env)) + "&type=scale_out&step=1"
    port = gateway_on_localhost
    figures = await attack(
        f"http://127.0.0.1:{port}",
        f"http://[::1]:{port}",
        query,
        seconds=ATTACK_SECONDS,
        slow=500,
        bad_rate=1000,
    )
    print(json.dumps(figures.summary()))  # the figures, for the record (pytest -s)
    for caller in (figures.same_address, figures.other_address):
        assert set(caller.statuses) == {"202"}, figures.summary()
        assert caller.statuses["202"] >= 10
    assert figures.slow_opened >= 500
    assert figures.bad_statuses.get("429", 0) > 0  # the wrong secrets were limited
