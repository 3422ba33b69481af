"""An AMQP connection whose frames written in one event-loop turn leave in one write.

aiormq writes each frame group (a publish, an ack) with its own ``transport.write``, and
a transport whose buffer is empty sends at once: one system call, and one TCP segment
for the broker to read, per frame. Here the frames written during one turn (the results
a worker publishes when a group commit ends, the acks of one batch, the publishes of the
calls read in one turn) are joined and sent by a callback at the end of the turn, in
order. Nothing waits longer than the turn; `drain` and `close` send what is pending
first, so flow control and the closing handshake are unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

__all__ = ["CoalescingConnection", "CoalescingTransportFactory"]


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
    """TCP, or TLS for ``amqps``, as aiormq's own factories, with the joining writer."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" and provider else None
        # aiormq's connection always gives the port (5672, or 5671 for amqps).
        host, port = url.host or "localhost", url.port or (5671 if ssl else 5672)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, host, port, ssl=ssl, **kwargs
            )
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        return reader, _CoalescingWriter(transport, protocol, reader, loop)


class CoalescingConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, (re)connecting through `CoalescingTransportFactory`.

    aio-pika hands its connection keywords on to `aiormq.connect`, which takes the
    factory; `connect_robust` itself would put an extra keyword into the URL's query.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kwargs = {**self.kwargs, "transport_factory": CoalescingTransportFactory()}
