"""The in-process bus, for the broker tests that run without RabbitMQ."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.broker import MemoryBus


@pytest.fixture
async def memory_bus() -> AsyncIterator[MemoryBus]:
    """A started in-process bus, closed afterwards."""
    bus = MemoryBus()
    await bus.start()
    yield bus
    await bus.close()
