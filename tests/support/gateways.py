"""In-process gateways on ephemeral ports, and what tests read from them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from shared.broker import Bus
from shared.settings import Settings
from shared.store import TriggerStore
from shared.triggers import Trigger, trigger_call_url
from tests.support.redis_keys import REDIS

__all__ = ["ADMIN_TOKEN", "Gateway", "Samples", "metric_samples", "running_gateways", "wait_ready"]

ADMIN_TOKEN = "test-admin-token-5b1f0c2e9d"


@dataclass
class Gateway:
    """A running gateway and a client session to call it."""

    url: str
    http: aiohttp.ClientSession
    settings: Settings
    bus: Bus | None = None

    def call_url(self, trigger: Trigger, secret: str) -> str:
        """The trigger's URL on this gateway."""
        return trigger_call_url(self.url, trigger, secret)

    def call_url_for(self, created: dict[str, Any]) -> str:
        """The printed `url` of a created or rotated trigger, pointed at this gateway."""
        return f"{self.url}/hook/trigger?{created['url'].split('?', 1)[1]}"

    async def admin(
        self, method: str, path: str, body: object = None, *, token: str | None = ADMIN_TOKEN
    ) -> tuple[int, Any]:
        """Call the admin API with the token; the status and the decoded JSON body."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(
            method, f"{self.url}{path}", json=body, headers=headers
        ) as response:
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def running_gateways(
    settings: Settings, store: TriggerStore, bus: Bus, count: int
) -> AsyncIterator[list[Gateway]]:
    """`count` gateways on ephemeral ports, sharing the store, the bus and a client session."""
    servers = [
        TestServer(create_app(settings, store=store, bus=bus), host="127.0.0.1")
        for _ in range(count)
    ]
    try:
        for server in servers:
            await server.start_server()
        async with aiohttp.ClientSession() as http:
            yield [
                Gateway(url=str(s.make_url("")).rstrip("/"), http=http, settings=settings, bus=bus)
                for s in servers
            ]
    finally:
        for server in servers:
            await server.close()


@pytest.fixture
async def gateway(settings: Settings, store: TriggerStore, bus: Bus) -> AsyncIterator[Gateway]:
    """The gateway on an ephemeral port."""
    async with running_gateways(settings, store, bus, 1) as (one,):
        yield one


@pytest.fixture
async def shared_gateways(
    settings: Settings, store: TriggerStore, bus: Bus, redis_prefix: str
) -> AsyncIterator[list[Gateway]]:
    """Two gateways sharing the test's Redis prefix, as several behind a load balancer."""
    shared = settings.with_(redis_url=REDIS, redis_prefix=redis_prefix)
    async with running_gateways(shared, store, bus, 2) as gateways:
        yield gateways


async def wait_ready(base_url: str, within: float = 30.0) -> None:
    """Wait until a gateway at `base_url` answers /readyz with 200 (it connected to RabbitMQ)."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(within):
        while True:
            try:
                async with http.get(f"{base_url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(text: str) -> Samples:
    """A /metrics page as {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
