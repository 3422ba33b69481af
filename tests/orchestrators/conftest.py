"""Fixtures of the adapter tests: the wire-level fakes, seeded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.orchestrators.fake_docker import FakeDocker, running_fake_docker


@pytest.fixture
async def fake_docker() -> AsyncIterator[tuple[FakeDocker, str]]:
    """A fake engine with stack shop (web x2, api x1, a global agent) and stack blog."""
    async with running_fake_docker() as (fake, url):
        fake.add("shop", "web", replicas=2, image="nginx:1.27")
        fake.add("shop", "api", replicas=1, image="ghcr.io/acme/shop-api:1.4")
        fake.add("shop", "agent", replicas=None, image="datadog/agent:7")
        fake.add("blog", "web", replicas=1, image="nginx:1.27")
        yield fake, url
