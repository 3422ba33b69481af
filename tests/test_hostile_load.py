"""Under attack from one address (500 slow-body connections, 1,000 bad calls a second), the
gateway keeps answering legitimate callers at that address and at another one."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.hostile import Caller, legit
from tests.support.cli import created_scale_trigger, triggers_cli
from tests.support.gateways import wait_ready
from tests.support.processes import free_port

pytestmark = pytest.mark.slow

# Long enough for the slow connections to meet every deadline, short enough for CI.
ATTACK_SECONDS = 15.0
# The legitimate callers alone first: the latency to compare with.
QUIET_SECONDS = 5.0


@pytest.fixture
async def gateway_on_two_addresses(env: dict[str, str]) -> AsyncIterator[tuple[int, int]]:
    """`triggers gateway --host 127.0.0.1,::1`: two client addresses on loopback; its port
    and process id."""
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
        yield port, process.pid
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _callers(base: str, query: str, seconds: float) -> tuple[Caller, Caller]:
    """A caller with the right secret at the attacking address and one at another."""
    same, other = await asyncio.gather(
        legit(base, query, seconds=seconds),
        legit(base.replace("127.0.0.1", "[::1]"), query, seconds=seconds),
    )
    return same, other


async def test_legitimate_callers_are_served_during_an_attack_from_one_address(
    gateway_on_two_addresses: tuple[int, int], env: dict[str, str]
) -> None:
    """Every call with the right secret, from the attacking address or another, is a 202
    while that address holds up to 500 slow bodies and sends wrong calls as fast as the
    generator (two processes, keep-alive, pipelined) gets answers, asking for 1,000 a second.

    The figures (rate reached, legitimate latency before and during, CPU of the generator
    and of the gateway) are printed; they are not asserted, the machine's load decides them.
    """
    port, pid = gateway_on_two_addresses
    query = (await created_scale_trigger(env)) + "&type=scale_out&step=1"
    base = f"http://127.0.0.1:{port}"
    calm_same, calm_other = await _callers(base, query, QUIET_SECONDS)
    gateway_cpu = _cpu_seconds(pid)
    # The attacker in a process of its own, so that its work does not slow the callers here.
    attacker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.hostile", "attack", base, query, str(ATTACK_SECONDS),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(2.0)  # the slow connections are open first
    same, other = await _callers(base, query, ATTACK_SECONDS - 4)
    out, _ = await asyncio.wait_for(attacker.communicate(), 120)
    gateway_cpu = _cpu_seconds(pid) - gateway_cpu
    seen = json.loads(out)
    figures = {
        "attack": seen,
        "gateway_cpu_s": round(gateway_cpu, 1),
        "quiet": {"same": calm_same.summary(), "other": calm_other.summary()},
        "attacked": {"same": same.summary(), "other": other.summary()},
    }
    print(json.dumps(figures))
    for caller in (calm_same, calm_other, same, other):
        assert set(caller.statuses) == {"202"}, figures
        assert sum(caller.statuses.values()) >= 10, figures
    assert seen["slow_connections_opened"] >= 500
    assert seen["bad_answers"].get("429", 0) > 0  # the wrong secrets were limited
    bad = sum(n for status, n in seen["bad_answers"].items() if status in ("403", "429"))
    # Far more hostile calls than legitimate ones were answered meanwhile.
    assert bad >= 20 * sum(same.statuses.values()), figures
