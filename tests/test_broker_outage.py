"""Broker down: the gateway answers 503, never 202, and recovers by itself."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from shared.settings import Settings
from shared.store import SqliteTriggerStore
from shared.triggers import trigger_call_url
from tests.proxy import TcpProxy
from tests.support.broker import through_proxy


async def _call(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], str]:
    async with http.get(url) as response:
        return response.status, dict(response.headers), await response.text()


async def test_gateway_answers_503_while_the_broker_is_unreachable_then_recovers(
    settings: Settings, store: SqliteTriggerStore, proxy: TcpProxy
) -> None:
    """Cut the broker: 503 with Retry-After and a JSON error; heal it: 202 again, no restart."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    # The gateway owns its bus here, exactly as `triggers gateway` runs it.
    app = create_app(through_proxy(settings, proxy), store=store)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    url = trigger_call_url(base, trigger, secret)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                status, _, _ = await _call(http, url)
                if status == 202:
                    break
                await asyncio.sleep(0.1)
            assert status == 202

            await proxy.cut()
            statuses = []
            for _ in range(5):
                status, headers, text = await _call(http, url)
                statuses.append(status)
                assert status == 503, text
                assert headers["Retry-After"] == "5"
                assert '"broker_unavailable"' in text
                assert secret not in text
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 503

            await proxy.restore()
            recovered = False
            for _ in range(150):
                status, _, text = await _call(http, url)
                assert status in (202, 503), text
                if status == 202:
                    recovered = True
                    break
                await asyncio.sleep(0.2)
            assert recovered, "the gateway did not recover within 30 s of the broker's return"
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200
    finally:
        await server.close()


async def test_gateway_starts_without_a_broker_and_connects_when_it_appears(
    settings: Settings, store: SqliteTriggerStore, proxy: TcpProxy
) -> None:
    """A gateway started while RabbitMQ is down answers 503, then 202 once it is up."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    await proxy.cut()
    server = TestServer(create_app(through_proxy(settings, proxy), store=store), host="127.0.0.1")
    await server.start_server()
    url = trigger_call_url(str(server.make_url("")).rstrip("/"), trigger, secret)
    try:
        async with aiohttp.ClientSession() as http:
            status, _, text = await _call(http, url)
            assert status == 503, text
            await proxy.restore()
            for _ in range(100):
                status, _, _ = await _call(http, url)
                if status == 202:
                    break
                await asyncio.sleep(0.2)
            assert status == 202
    finally:
        await server.close()
