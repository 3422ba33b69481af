"""RabbitMQ fixtures: a private vhost per session, the gateway's bus, queue depths and a
cuttable proxy to the broker.

Tests talk to the real RabbitMQ on 127.0.0.1 (started by .ci/run when it is not running);
a missing server fails the tests rather than skipping them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aio_pika
import pytest

from shared.broker import AmqpBus, Bus, MemoryBus
from shared.messages import CommandEnvelope, decode_command
from shared.settings import Settings
from shared.topology import COMMAND_QUEUES, DEAD_QUEUE, RECORDER_QUEUE
from tests.proxy import TcpProxy
from tests.support.unit_lane import is_unit

if TYPE_CHECKING:
    from tests.support.gateways import Gateway

__all__ = [
    "BROKER",
    "RecordingBus",
    "broker_list",
    "broker_queues",
    "commands_published",
    "private_vhost",
    "published",
    "queue_depth",
    "rabbitmqctl",
    "through_proxy",
]

BROKER = os.environ.get("TRIGGERS_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672")


def rabbitmqctl(*args: str) -> str:
    """Run `rabbitmqctl ARGS` against the shared broker; its output."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    done = subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60, text=True)
    return done.stdout


def broker_list(amqp_url: str, kind: str, *columns: str) -> list[dict[str, Any]]:
    """`rabbitmqctl list_<kind> <columns>` of the URL's vhost: one dict a row."""
    vhost = amqp_url.rsplit("/", 1)[1]
    out = rabbitmqctl("--quiet", f"list_{kind}", "-p", vhost, *columns, "--formatter", "json")
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def broker_queues(amqp_url: str) -> list[str]:
    """Every queue of the URL's vhost, as the broker lists them."""
    return sorted(row["name"] for row in broker_list(amqp_url, "queues", "name"))


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    """The AMQP URL of a new vhost of the shared broker, deleted afterwards."""
    vhost = f"triggers-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"{BROKER}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A vhost of its own, so tests never see another run's messages."""
    with private_vhost() as url:
        yield url


async def _purge(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in [*COMMAND_QUEUES.values(), DEAD_QUEUE, RECORDER_QUEUE]:
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                channel = await connection.channel()
                continue
            await queue.purge()


class RecordingBus(MemoryBus):
    """The in-process bus of a unit test; it remembers every command published on it."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[CommandEnvelope] = []

    async def publish_command(self, envelope: CommandEnvelope) -> None:
        """Queue the command, as the in-process bus does, and remember it."""
        await super().publish_command(envelope)
        self.published.append(envelope)


@pytest.fixture
async def bus(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    """The gateway's bus, connected, with empty command queues (emptied again after).

    A `unit` test gets a `RecordingBus` instead, shared by the test's gateway, worker,
    recorder and result listener as RabbitMQ would be.
    """
    if is_unit(request.node):
        memory = RecordingBus()
        await memory.start()
        yield memory
        await memory.close()
        return
    amqp = AmqpBus.from_settings(settings, "test-gateway")
    await amqp.start()
    await _purge(settings.amqp_url)
    yield amqp
    await amqp.close()
    # The vhost is the session's: a command left in a queue would be applied by the next
    # test's worker (and scale that test's service before its own call).
    await _purge(settings.amqp_url)


async def published(where: Gateway | str) -> list[CommandEnvelope]:
    """Take every command waiting to be consumed: from a unit test gateway's in-process
    bus, or from the command queues of the broker at `where` (a gateway's or a URL)."""
    if not isinstance(where, str) and isinstance(where.bus, RecordingBus):
        taken = list(where.bus.published)
        where.bus.published.clear()
        return taken
    amqp_url = where if isinstance(where, str) else where.settings.amqp_url
    commands: list[CommandEnvelope] = []
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in COMMAND_QUEUES.values():
            queue = await channel.declare_queue(name, passive=True)
            for _ in range(200):
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    break
                commands.append(decode_command(message.body))
    return commands


async def commands_published(bus: Bus | None, amqp_url: str) -> int:
    """Commands published and not consumed yet: in the broker's command queues, or the
    ones a unit test's in-process bus took."""
    if isinstance(bus, RecordingBus):
        return len(bus.published)
    return sum([await queue_depth(amqp_url, name) for name in COMMAND_QUEUES.values()])


async def queue_depth(amqp_url: str, name: str) -> int:
    """Messages ready in a queue, by passive declare."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[TcpProxy]:
    """A cuttable path to the test's RabbitMQ (see tests/proxy.py)."""
    parts = urlsplit(settings.amqp_url)
    tcp = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await tcp.start()
    yield tcp
    await tcp.close()


def through_proxy(settings: Settings, proxy: TcpProxy) -> Settings:
    """The settings with the broker reached through the proxy, and a short publish timeout."""
    parts = urlsplit(settings.amqp_url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
    return settings.with_(amqp_url=parts._replace(netloc=netloc).geturl(), publish_timeout=2.0)
