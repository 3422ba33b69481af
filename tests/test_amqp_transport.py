"""The AMQP connection's writer: frames of one loop turn leave in one write, in order.

Driven over a real loopback socket; the broker-facing behaviour (publish, confirm,
consume, reconnect) runs through it in every other broker test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import aio_pika
import aiormq
import pytest
import structlog
from yarl import URL

from shared.amqp_transport import CoalescingConnection, CoalescingTransportFactory
from shared.broker import AmqpBus
from shared.settings import Settings
from tests.support.broker import BROKER
from tests.support.messages import scale_command
from tests.support.processes import free_port


@pytest.fixture
async def sink() -> AsyncIterator[tuple[int, asyncio.Queue[bytes]]]:
    """A TCP server on 127.0.0.1 that queues what it reads (b"" at EOF)."""
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.put_nowait(chunk)
        received.put_nowait(b"")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port, received


async def _read_all(received: asyncio.Queue[bytes]) -> bytes:
    data = b""
    while chunk := await asyncio.wait_for(received.get(), 5):
        data += chunk
    return data


@pytest.mark.unit
async def test_writes_of_one_turn_reach_the_transport_as_one_write(
    sink: tuple[int, asyncio.Queue[bytes]],
) -> None:
    port, received = sink
    _, writer = await CoalescingTransportFactory().create(URL(f"amqp://127.0.0.1:{port}/"))
    sent: list[bytes] = []
    transport_write = writer.transport.write

    def spy(
        data: bytes | bytearray | memoryview,
    ) -> None:  # the one boundary we observe: what the socket is given
        sent.append(bytes(data))
        transport_write(data)

    writer.transport.write = spy  # type: ignore[method-assign]  # the test's spy
    writer.write(b"frame-1;")
    writer.write(b"frame-2;")
    writer.writelines([b"frame-3;", b"frame-4;"])
    assert sent == []  # held until the end of this turn
    await asyncio.sleep(0)
    assert sent == [b"frame-1;frame-2;frame-3;frame-4;"]
    writer.write(b"frame-5;")
    await writer.drain()  # drain sends what is pending at once
    assert sent[1:] == [b"frame-5;"]
    writer.write(b"last")
    writer.close()  # close sends what is pending before closing
    await writer.wait_closed()
    assert await _read_all(received) == b"frame-1;frame-2;frame-3;frame-4;frame-5;last"


@pytest.mark.unit
async def test_a_refused_connection_raises_the_client_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(aio_pika.exceptions.AMQPConnectionError):
        await CoalescingTransportFactory().create(URL(f"amqp://127.0.0.1:{port}/"))


async def test_a_robust_connection_through_it_publishes_and_consumes() -> None:
    connection = await aio_pika.connect_robust(BROKER, connection_class=CoalescingConnection)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(exclusive=True)
        # Many confirmed publishes from one turn: joined on the way out, each confirmed.
        await asyncio.gather(
            *(
                channel.default_exchange.publish(aio_pika.Message(str(i).encode()), queue.name)
                for i in range(50)
            )
        )
        bodies = []
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                bodies.append(int(message.body))
                if len(bodies) == 50:
                    break
    assert bodies == list(range(50))


async def test_a_bus_given_several_nodes_skips_one_that_refuses_and_names_the_one_it_uses(
    amqp_url: str,
) -> None:
    """With a dead address listed first, the bus connects to the live node, logs and
    reports it (`node`), and publishes there."""
    live = URL(amqp_url)
    dead = live.with_port(free_port())
    bus = AmqpBus(f"{dead},{live}", role="test-nodes", shuffle=False)
    with structlog.testing.capture_logs() as logs:
        await bus.start()
    try:
        assert bus.node == f"127.0.0.1:{live.port}"
        connected = [e for e in logs if e["event"] == "bus.connected"]
        assert [e["node"] for e in connected] == [bus.node]
        await bus.publish_command(scale_command())
    finally:
        await bus.close()
    assert bus.node is None


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("amqp://a:secret-one@h1:5672/v,amqp://a:secret-two@h2:5672/v", "same scheme, user"),
        ("amqp://a:secret-one@h1:5672/v,amqp://a:secret-one@h2:5672/other", "same scheme, user"),
        ("http://a:secret-one@h1/", "not an amqp:// or amqps:// URL"),
        (" , ", "is empty"),
    ],
)
def test_node_urls_that_cannot_be_one_cluster_are_refused_in_one_line(
    value: str, complaint: str
) -> None:
    """Node URLs differing in anything but the address, or not AMQP, fail at start-up
    naming TRIGGERS_AMQP_URL, without any password."""
    with pytest.raises(ValueError, match=complaint) as raised:
        Settings.from_env({"TRIGGERS_AMQP_URL": value})
    message = str(raised.value)
    assert message.startswith("TRIGGERS_AMQP_URL")
    assert "\n" not in message
    assert "secret" not in message


async def test_a_burst_of_publishes_leaves_in_one_write_after_a_reconnect_too() -> None:
    """100 publishes of one turn are written together, none waiting for another: aiormq's
    queue of frames for its writer (10 by default) is widened on every (re)connect."""
    writes: list[int] = []  # the size of each socket write

    class Spying(CoalescingTransportFactory):
        async def create(
            self, url: URL, **kwargs: object
        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await super().create(url, **kwargs)
            transport_write = writer.transport.write

            def spy(data: bytes | bytearray | memoryview) -> None:
                writes.append(len(data))
                transport_write(data)

            writer.transport.write = spy  # type: ignore[method-assign]  # the test's spy
            return reader, writer

    connection = CoalescingConnection(BROKER)
    connection.kwargs["transport_factory"] = Spying()
    await connection.connect(timeout=10)
    body = b"x" * 200
    try:
        for _ in range(2):
            channel = await connection.channel(publisher_confirms=True)
            queue = await channel.declare_queue(exclusive=True)
            # Our publisher's call (`shared.broker._publisher`): aiormq's, not waiting for the write.
            underlay = cast("aiormq.Channel", await channel.get_underlay_channel())
            writes.clear()
            confirms = await asyncio.gather(
                *(
                    underlay.basic_publish(body, routing_key=queue.name, wait=False)
                    for _ in range(100)
                )
            )
            assert all(isinstance(c, aiormq.spec.Basic.Ack) for c in confirms)
            # The first write after the burst carries all 100 publishes (with 10 queued at
            # most, it carried 10 and the rest followed a turn at a time).
            assert writes[0] >= 100 * len(body), writes
            assert (await queue.declare()).message_count == 100
            await channel.close()
            await connection.reconnect()
    finally:
        await connection.close()
