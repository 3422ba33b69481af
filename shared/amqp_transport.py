"""An AMQP connection whose frames written in one event-loop turn leave in one write.

aiormq writes each frame group (a publish, an ack) with its own ``transport.write``, and
a transport whose buffer is empty sends at once: one system call, and one TCP segment
for the broker to read, per frame. Here the frames written during one turn (the results
a worker publishes when a group commit ends, the acks of one batch, the publishes of the
calls read in one turn) are joined and sent by a callback at the end of the turn, in
order. Nothing waits longer than the turn; `drain` and `close` send what is pending
first, so flow control and the closing handshake are unchanged. aiormq's queue of frames
waiting for its writer task is widened from 10 to a burst's worth (`CoalescingConnection`),
so the publishes of one turn do not wait for one another.

The same factory knows a cluster's nodes (`BrokerNodes`, from a comma-separated
``TRIGGERS_AMQP_URL``): each connection attempt tries them in turn from the one after the
node it used last, so a reconnect after a node died lands on another node, and processes
that shuffled the list differently spread over the cluster.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aio_pika
from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

__all__ = [
    "BrokerNodes",
    "CoalescingConnection",
    "CoalescingTransportFactory",
    "connect_any",
    "connect_robust_nodes",
    "redact",
    "split_urls",
]


def redact(url: str) -> str:
    """A broker URL (or comma-separated list) without its passwords, for logs and errors."""
    redacted = []
    for one in split_urls(url) or [url]:
        scheme, sep, rest = one.partition("://")
        if "@" in rest:
            creds, _, host = rest.rpartition("@")
            user = creds.split(":", 1)[0]
            redacted.append(f"{scheme}{sep}{user}:***@{host}")
        else:
            redacted.append(one)
    return ",".join(redacted)


def split_urls(value: str) -> list[str]:
    """The AMQP URLs of a comma-separated ``TRIGGERS_AMQP_URL`` (blanks dropped)."""
    return [part.strip() for part in value.split(",") if part.strip()]


class BrokerNodes:
    """The nodes of one RabbitMQ cluster, from a comma-separated list of AMQP URLs.

    Every URL must name the same scheme, user, password, vhost and options: only the
    address differs from node to node (the first URL gives the rest). The order is
    shuffled per process (`shuffle`) so processes spread over the nodes; each
    connection attempt starts at the node after the one tried last.
    """

    def __init__(self, value: str, *, shuffle: bool = True) -> None:
        urls = split_urls(value)
        if not urls:
            msg = "TRIGGERS_AMQP_URL is empty: give one AMQP URL, or several separated by commas"
            raise ValueError(msg)
        parsed = [URL(u) for u in urls]
        first = parsed[0]
        for url, raw in zip(parsed, urls, strict=True):
            if url.scheme not in ("amqp", "amqps") or not url.host:
                msg = f"TRIGGERS_AMQP_URL: {redact(raw)} is not an amqp:// or amqps:// URL"
                raise ValueError(msg)
            same = (url.scheme, url.user, url.password, url.path, url.query_string)
            if same != (first.scheme, first.user, first.password, first.path, first.query_string):
                msg = (
                    "TRIGGERS_AMQP_URL: every node's URL must have the same scheme, user, "
                    f"password, vhost and options; {redact(raw)} differs from {redact(urls[0])}"
                )
                raise ValueError(msg)
        # A node that hangs (stopped, cut off) rather than closing its connections is only
        # noticed by missed heartbeats: 5 s (aiormq gives up after 3 missed, ~18 s), not
        # the broker's 60 s (~3 minutes), unless the URL says otherwise.
        self.url = urls[0] if "heartbeat" in first.query else str(first.update_query(heartbeat=5))
        default_port = 5671 if first.scheme == "amqps" else 5672
        self.addresses = [(u.host or "localhost", u.port or default_port) for u in parsed]
        if shuffle:
            random.shuffle(self.addresses)
        self._next = 0
        # "host:port" of the node the last connection was made to.
        self.current: str | None = None

    def __len__(self) -> int:
        return len(self.addresses)

    def rotation(self) -> list[tuple[str, int]]:
        """Every node once, from the one after the node tried last."""
        n = len(self.addresses)
        return [self.addresses[(self._next + i) % n] for i in range(n)]

    def trying(self, address: tuple[str, int]) -> None:
        """An attempt on `address` begins: the next attempt starts after it."""
        self._next = (self.addresses.index(address) + 1) % len(self.addresses)


# Frame groups (a publish, an ack) waiting for aiormq's writer task: a burst's worth.
WRITE_QUEUE_FRAMES = 4096


def _widen_write_queue(write_queue: asyncio.Queue[Any]) -> None:
    """Let an aiormq connection queue a burst's frames without waiting.

    aiormq queues the frames to write for its writer task in a queue of 10
    (`Connection.FRAME_BUFFER_SIZE`). A publish that finds it full waits for the writer's
    next turn while holding its channel's lock, so every other publish of that turn queues
    behind the lock as well: a gateway reading 64 calls in one turn published them in
    rounds of 10, each round a wake-up of the writer, of each waiting publisher and of
    each lock waiter. The frames of one turn leave in one write anyway
    (`_CoalescingWriter`), and each publish still waits for its confirm: the queue only
    bounds how much a burst may hold in memory (4,096 frame groups, about 2 MB).
    """
    if 0 < write_queue.maxsize < WRITE_QUEUE_FRAMES:
        # asyncio.Queue has no setter; `full()` and `put()` read this on every call.
        write_queue._maxsize = WRITE_QUEUE_FRAMES  # type: ignore[attr-defined]


class _CoalescingWriter(asyncio.StreamWriter):
    """A stream writer that joins the writes of one loop turn into one."""

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._pending: list[bytes] = []
        self._on = loop

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        pending.append(bytes(data))
        if len(pending) == 1:
            self._on.call_soon(self.flush)

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def flush(self) -> None:
        """Hand what is pending to the transport now, as one write."""
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        if not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        self.flush()
        await super().drain()

    def write_eof(self) -> None:
        self.flush()
        super().write_eof()

    def close(self) -> None:
        self.flush()
        super().close()


class CoalescingTransportFactory(TransportFactory):
    """TCP, or TLS for ``amqps``, as aiormq's own factories, with the joining writer.

    With `nodes`, the URL's address is ignored: the nodes are tried in turn, the first
    that accepts the TCP connection is used (a refused one costs nothing; one that hangs
    costs the connection timeout, and the next attempt starts past it).
    """

    def __init__(self, nodes: BrokerNodes | None = None) -> None:
        self.nodes = nodes

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" and provider else None
        # aiormq's connection always gives the port (5672, or 5671 for amqps).
        default = (url.host or "localhost", url.port or (5671 if ssl else 5672))
        nodes = self.nodes
        failure: OSError | None = None
        for host, port in nodes.rotation() if nodes else [default]:
            if nodes:
                nodes.trying((host, port))
            try:
                opened = await self._open(host, port, ssl, kwargs)
            except OSError as exc:
                failure = exc
                continue
            if nodes:
                nodes.current = f"{host}:{port}"
            return opened
        assert failure is not None  # noqa: S101 - at least one address was tried
        raise AMQPConnectionError(*failure.args) from failure

    @staticmethod
    async def _open(
        host: str, port: int, ssl: Any, kwargs: dict[str, Any]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.create_connection(lambda: protocol, host, port, ssl=ssl, **kwargs)
        return reader, _CoalescingWriter(transport, protocol, reader, loop)


class CoalescingConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, (re)connecting through `CoalescingTransportFactory`.

    aio-pika hands its connection keywords on to `aiormq.connect`, which takes the
    factory; `connect_robust` itself would put an extra keyword into the URL's query.
    `nodes`: the cluster's nodes, tried in turn (the URL then gives only the credentials,
    vhost and options).
    """

    def __init__(
        self, url: str, *args: Any, nodes: BrokerNodes | None = None, **kwargs: Any
    ) -> None:
        super().__init__(URL(url), *args, **kwargs)
        self.kwargs = {**self.kwargs, "transport_factory": CoalescingTransportFactory(nodes)}

    async def _on_connected(self) -> None:
        # On every (re)connect, before the channels are restored on the new connection.
        if self.transport is not None:
            _widen_write_queue(self.transport.connection.write_queue)
        await super()._on_connected()


async def connect_robust_nodes(
    value: str, *, name: str, within: float = 5.0, reconnect_interval: float = 1.0
) -> CoalescingConnection:
    """A robust connection to one of the nodes of `value` (shuffled), moving on when it dies.

    `name`: the connection's name as the broker lists it.
    """
    connection = CoalescingConnection(
        (nodes := BrokerNodes(value)).url,
        nodes=nodes,
        reconnect_interval=reconnect_interval,
        client_properties={"connection_name": name},
    )
    await connection.connect(timeout=within)
    return connection


async def connect_any(value: str, *, within: float = 10.0) -> aio_pika.abc.AbstractConnection:
    """A plain (not robust) connection to the first node of `value` that accepts one.

    For short-lived tools (dlq, bench): the nodes are tried in the given order.
    """
    nodes = BrokerNodes(value, shuffle=False)
    failure: Exception | None = None
    for host, port in nodes.addresses:
        try:
            return await aio_pika.connect(
                str(URL(nodes.url).with_host(host).with_port(port)), timeout=within
            )
        except (OSError, AMQPConnectionError, TimeoutError) as exc:
            failure = exc
    msg = f"cannot reach RabbitMQ at {redact(value)}: {failure!r}"
    raise AMQPConnectionError(msg)
