"""Under attack from one address (500 slow-body connections, 1,000 bad calls a second), the
gateway keeps answering legitimate callers at that address and at another one."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import pytest

from tests.hostile import legit
from tests.support.cli import created_scale_trigger, triggers_cli
from tests.support.gateways import wait_ready
from tests.support.processes import free_port

pytestmark = pytest.mark.slow

# Long enough for the slow connections to meet every deadline, short enough for CI.
ATTACK_SECONDS = 15.0


@pytest.fixture
async def gateway_on_two_addresses(env: dict[str, str]) -> AsyncIterator[int]:
    """`triggers gateway --host 127.0.0.1,::1`: two client addresses on loopback."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *triggers_cli(),
        "gateway",
        "--host",
        "127.0.0.1,::1",
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
    gateway_on_two_addresses: int, env: dict[str, str]
) -> None:
    """Every call with the right secret, from the attacking address or another, is a 202."""
    query = (await created_scale_trigger(env)) + "&type=scale_out&step=1"
    base = f"http://127.0.0.1:{gateway_on_two_addresses}"
    # The attacker in a process of its own, so that its work does not slow the callers here.
    attacker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.hostile", "attack", base, query, str(ATTACK_SECONDS),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(2.0)  # the slow connections are open first
    same, other = await asyncio.gather(
        legit(base, query, seconds=ATTACK_SECONDS - 4),
        legit(base.replace("127.0.0.1", "[::1]"), query, seconds=ATTACK_SECONDS - 4),
    )
    out, _ = await asyncio.wait_for(attacker.communicate(), 120)
    seen = json.loads(out)
    print(json.dumps({"attack": seen, "same": same.summary(), "other": other.summary()}))
    for caller in (same, other):
        assert set(caller.statuses) == {"202"}, (seen, caller.summary())
        assert caller.statuses["202"] >= 10
    assert seen["slow_connections_opened"] >= 500
    assert seen["bad_answers"].get("429", 0) > 0  # the wrong secrets were limited
