"""Operator mistakes (a taken port, an unreachable or misconfigured store or broker) end
in one line that says what is wrong and which setting to fix, never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from shared.jobs import JobRecord, opened_job_store
from shared.settings import Settings
from tests.support.cli import triggers_cli
from tests.support.messages import result_event
from tests.support.processes import free_port


def run(env: dict[str, str], *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    """`triggers ARGS` with some variables changed; bounded, so a hang fails the test."""
    return subprocess.run(
        [*triggers_cli(), *args],
        env={**env, "TRIGGERS_LOG_FORMAT": "console", **overrides},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed, after checking it is just that."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert "[error" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def unwritable(tmp_path: Path) -> str:
    """A SQLite URL under a regular file: no folder can be made there, even by root."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    return f"sqlite:///{blocker}/triggers.db"


@pytest.mark.parametrize("command", [["list"], ["history"], ["audit"], ["recorder"]])
def test_an_unwritable_sqlite_path_is_one_line(
    env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    """list, history, audit and recorder on an unusable SQLite path name the file and the setting."""
    line = one_line(run(env, *command, TRIGGERS_DATABASE=unwritable(tmp_path)))
    assert "not-a-folder" in line
    assert "TRIGGERS_DATABASE" in line


@pytest.mark.parametrize("command", [["list"], ["history"], ["recorder"]])
def test_postgresql_down_is_one_line(env: dict[str, str], command: list[str]) -> None:
    """A PostgreSQL that is not running: the address, "connection refused", the setting; no password."""
    url = f"postgresql://someone:hunter2@127.0.0.1:{free_port()}/test"
    line = one_line(run(env, *command, TRIGGERS_DATABASE=url))
    assert "cannot reach PostgreSQL at 127.0.0.1:" in line
    assert "refused" in line.lower()
    assert "TRIGGERS_DATABASE" in line
    assert "hunter2" not in line


def test_a_wrong_postgresql_role_is_one_line(env: dict[str, str]) -> None:
    """A role PostgreSQL does not know: the login was refused, fix the user in TRIGGERS_DATABASE."""
    url = "postgresql://no_such_role_here@127.0.0.1:5432/test"
    line = one_line(run(env, "list", TRIGGERS_DATABASE=url))
    assert "refused the login" in line
    assert "no_such_role_here" in line
    assert "TRIGGERS_DATABASE" in line


@pytest.mark.parametrize("command", [["worker"], ["recorder"], ["dlq", "list"]])
def test_an_unreachable_broker_is_one_line(env: dict[str, str], command: list[str]) -> None:
    """worker, recorder and dlq without RabbitMQ: one line naming the broker and the setting."""
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    line = one_line(run(env, *command, TRIGGERS_AMQP_URL=url))
    assert "cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:" in line
    assert "TRIGGERS_AMQP_URL" in line


@pytest.mark.parametrize("processes", ["1", "2"])
def test_gateway_on_a_taken_port_exits_with_one_line(env: dict[str, str], processes: str) -> None:
    """`triggers gateway` on a port in use exits 1 at once, naming the address."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run(env, "gateway", "--port", str(port), "--processes", processes)
    line = one_line(result)
    assert f"127.0.0.1:{port}" in line
    assert "in use" in line


def test_gateway_on_a_taken_ipv6_loopback_port_exits_with_one_line(env: dict[str, str]) -> None:
    """`--host 127.0.0.1,::1` checks the IPv6 address as IPv6, and names it when it is taken."""
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as taken:
        port = taken.getsockname()[1]
        result = run(env, "gateway", "--host", "127.0.0.1,::1", "--port", str(port))
    line = one_line(result)
    assert f"[::1]:{port}: Address already in use" in line


def test_gateway_with_an_unreachable_store_exits_with_one_line(env: dict[str, str]) -> None:
    """`triggers gateway` with PostgreSQL down exits 1 before serving, naming the setting."""
    url = f"postgresql://someone@127.0.0.1:{free_port()}/test"
    line = one_line(run(env, "gateway", "--port", str(free_port()), TRIGGERS_DATABASE=url))
    assert "TRIGGERS_DATABASE" in line


async def test_tail_since_without_the_broker_replays_the_history(
    env: dict[str, str], settings: Settings
) -> None:
    """`tail --since` with RabbitMQ unreachable (dev's in-process bus) prints the recorded jobs."""
    async with opened_job_store(settings.database) as jobs:
        await jobs.record(JobRecord.from_event(result_event("a" * 32, ago=60)))
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    result = run(env, "tail", "--since", "1h", "--json", TRIGGERS_AMQP_URL=url)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["job_id"] for line in result.stdout.splitlines()] == ["a" * 32]
    assert "history only" in result.stderr
    live_only = run(env, "tail", TRIGGERS_AMQP_URL=url)
    assert live_only.returncode == 2
    assert "--since" in live_only.stderr
