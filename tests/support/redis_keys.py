"""Redis: a key prefix of its own per test on the shared server."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

__all__ = ["REDIS"]

REDIS = os.environ.get("TRIGGERS_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of its own on the shared Redis; its keys are deleted afterwards.

    Redis is pinged first: the gateway falls back to its memory when Redis is missing, so
    without the ping a test of the shared state could pass without it.
    """
    import redis.asyncio as redis  # noqa: PLC0415 - only the shared-state tests need it

    prefix = f"triggers-test-{uuid.uuid4().hex[:8]}:"
    client = redis.from_url(REDIS)
    await client.ping()
    yield prefix
    async for key in client.scan_iter(match=f"{prefix}*"):
        await client.delete(key)
    await client.aclose()
