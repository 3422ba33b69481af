"""A lean HTTP/1.1 keep-alive client for the end-to-end driver, on httptools' parser.

The driver shares the cores with the processes it measures, so its own CPU per call is
taken from them: aiohttp's client spends a few hundred microseconds per call, about as
much as the gateway it calls. This one sends a fixed GET on one connection and lets
httptools (the C parser uvicorn uses) parse the answer: status, headers, body.
"""

from __future__ import annotations

import asyncio
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = ["HttpError", "KeepAliveClient"]


class HttpError(Exception):
    """The connection failed or the answer could not be parsed."""


class _Answer(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.done: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: BaseException | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's does not subclass asyncio.Transport, so no isinstance).
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"bad answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        # A reset is a failed call for the driver to count, not an error to end the run.
        self.lost = self.lost or HttpError(f"connection lost: {exc or 'closed'}")
        self._fail(self.lost)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive() and self.transport is not None:
            # `Connection: close` (gunicorn's sync workers): the next call reconnects.
            self.lost = HttpError("closed by the server after its answer")
            self.transport.close()
        if self.done is not None and not self.done.done():
            self.done.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def _fail(self, exc: BaseException) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)


class KeepAliveClient:
    """One keep-alive connection that GETs one URL, one call at a time."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        self._request = (
            f"GET {target} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            "User-Agent: triggers-bench\r\n\r\n"
        ).encode()
        self._protocol: _Answer | None = None

    async def get(self) -> tuple[int, bytes]:
        """Status and body of one call (reconnecting if the last one closed)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None or protocol.transport is None:
            loop = asyncio.get_running_loop()
            try:
                _, protocol = await loop.create_connection(_Answer, self._host, self._port)
            except OSError as exc:
                raise HttpError(f"cannot connect: {exc}") from exc
            self._protocol = protocol
        protocol.body = []
        protocol.done = asyncio.get_running_loop().create_future()
        assert protocol.transport is not None  # noqa: S101 - set by connection_made
        protocol.transport.write(self._request)
        return await protocol.done

    def close(self) -> None:
        """Close the connection."""
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
