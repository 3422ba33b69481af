"""The unit lane: a test marked `unit` runs without RabbitMQ, PostgreSQL or Redis.

Loaded as a plugin by tests/conftest.py. For a `unit` test it fails the test loudly
- when the test needs a fixture that reaches a service (listed below), before anything
  connects, and
- when anything dials a service port during its setup or call (5672, 5432, 6379, the ports
  of the service URLs in the environment, and CLOSED_AMQP_URL's), even if the code under
  test catches the refusal and falls back to its memory: such a test would pass here and
  mean something else with the services up. Teardown is left alone: the last test of a
  module or run also finalises the wider fixtures of the tests before it.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Generator
from typing import Any
from urllib.parse import urlsplit

import pytest

__all__ = ["CLOSED_AMQP_URL", "SERVICE_FIXTURES", "is_unit"]

# Fixtures that connect to a service, and the service each needs. (`bus`, `results`,
# `worker` and `recorder` run on the in-process bus in a unit test.)
SERVICE_FIXTURES = {
    "amqp_url": "RabbitMQ",
    "proxy": "RabbitMQ",
    "pg_database": "PostgreSQL",
    "pg_url": "PostgreSQL",
    "redis_prefix": "Redis",
}
# The broker URL a unit test's settings carry: nothing listens on port 1.
CLOSED_AMQP_URL = "amqp://guest:guest@127.0.0.1:1/"
_URL_VARIABLES = (
    "TRIGGERS_TEST_BROKER",
    "TRIGGERS_TEST_POSTGRES",
    "TRIGGERS_TEST_REDIS",
    "TRIGGERS_AMQP_URL",
    "TRIGGERS_DATABASE",
    "TRIGGERS_REDIS_URL",
)
_dialled = pytest.StashKey[list[str]]()
_reported = pytest.StashKey[bool]()
_running = pytest.StashKey[pytest.Item | None]()
_guard = pytest.StashKey["_Guard"]()


_MEMORY_FS = "/dev/shm"  # noqa: S108 - a tmpfs; the directory made in it is private
_memory_basetemp = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """`pytest -m unit` keeps its temporary files (SQLite stores) in memory when it can.

    The lane's time is mostly SQLite's fsyncs on a busy disk; durability is not what a unit
    test checks. Runs before pytest reads --basetemp; an explicit --basetemp wins.
    """
    if config.option.markexpr.strip() != "unit" or config.option.basetemp:
        return
    if os.path.isdir(_MEMORY_FS) and os.access(_MEMORY_FS, os.W_OK):
        config.option.basetemp = tempfile.mkdtemp(prefix="triggers-unit-", dir=_MEMORY_FS)
        config.stash[_memory_basetemp] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    """The in-memory temporary files go with the run."""
    basetemp = config.stash.get(_memory_basetemp, None)
    if basetemp is not None:
        shutil.rmtree(basetemp, ignore_errors=True)


def is_unit(node: pytest.Item | Any) -> bool:
    """Whether the node (a test, or a fixture's request node) is marked `unit`."""
    return node.get_closest_marker("unit") is not None


def service_ports(environ: dict[str, str] | os._Environ[str] = os.environ) -> set[int]:
    """The ports of RabbitMQ, PostgreSQL and Redis: their defaults and those configured."""
    ports = {5672, 5432, 6379, 1}
    for variable in _URL_VARIABLES:
        for url in environ.get(variable, "").split(","):
            try:
                port = urlsplit(url.strip()).port
            except ValueError:
                continue
            if port is not None:
                ports.add(port)
    return ports


def _refuse(item: pytest.Item, service: str, how: str) -> None:
    msg = f"{item.nodeid} is marked unit but needs {service} ({how}): unmark it or drop the need"
    pytest.fail(msg, pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A unit test that asks for a service fixture fails before the fixture connects."""
    if not is_unit(item):
        return
    for name in getattr(item, "fixturenames", ()):
        if name in SERVICE_FIXTURES:
            _refuse(item, SERVICE_FIXTURES[name], f"fixture `{name}`")


def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> None:
    """A service fixture a unit test reaches at run time (`getfixturevalue`) fails too."""
    name = fixturedef.argname
    item = request.config.stash.get(_running, None)
    if name in SERVICE_FIXTURES and item is not None and is_unit(item):
        _refuse(item, SERVICE_FIXTURES[name], f"fixture `{name}`, at run time")


class _Guard:
    """Refuses connections to the service ports and remembers each attempt."""

    def __init__(self, ports: set[int], dialled: list[str]) -> None:
        self.ports = ports
        self.dialled = dialled
        self.active = True

    def check(self, address: Any) -> None:
        if not self.active:
            return
        if isinstance(address, tuple) and len(address) >= 2 and address[1] in self.ports:
            where = f"{address[0]}:{address[1]}"
        elif isinstance(address, str | bytes) and b".s.PGSQL." in os.fsencode(address):
            where = os.fsdecode(address)
        else:
            return
        self.dialled.append(where)
        msg = f"unit lane: connecting to {where} (a service port) is not allowed"
        raise ConnectionRefusedError(msg)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

        def guarded_connect(sock: socket.socket, address: Any) -> None:
            self.check(address)
            connect(sock, address)

        def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
            self.check(address)
            return connect_ex(sock, address)

        monkeypatch.setattr(socket.socket, "connect", guarded_connect)
        monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Around a unit test's setup and call: no connection to a service port."""
    item.config.stash[_running] = item
    try:
        if not is_unit(item):
            return (yield)
        dialled = item.stash.setdefault(_dialled, [])
        with pytest.MonkeyPatch.context() as patch:
            guard = item.stash[_guard] = _Guard(service_ports(), dialled)
            guard.install(patch)
            return (yield)
    finally:
        item.config.stash[_running] = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Teardown is not the unit test's own: the last test of a run also tears down the
    session's fixtures (dropping the PostgreSQL test database), which may dial a service."""
    guard = item.stash.get(_guard, None)
    if guard is not None:
        guard.active = False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A unit test that dialled a service fails, whatever the code did with the refusal."""
    report = yield
    dialled = item.stash.get(_dialled, [])
    if (
        dialled
        and report.when != "setup"
        and report.passed
        and not item.stash.get(_reported, False)
    ):
        item.stash[_reported] = True
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} is marked unit but connected to a service port: "
            f"{', '.join(sorted(set(dialled)))}"
        )
    return report
