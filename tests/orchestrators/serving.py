"""Serve a wire-level fake API on an ephemeral loopback port for the length of a test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestServer

__all__ = ["serving"]


class Fake(Protocol):
    """What the fakes share: an aiohttp app, and a way to free requests told to hang."""

    def app(self) -> web.Application:
        """The fake's routes."""
        ...

    def release(self) -> None:
        """Let every held request finish."""
        ...


F = TypeVar("F", bound=Fake)


@asynccontextmanager
async def serving(fake: F) -> AsyncIterator[tuple[F, str]]:
    """The fake, and its base URL, while the block runs."""
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        fake.release()
        await server.close()
