"""PostgreSQL backends killed under a gateway while calls flow (issue 13, item 7): every
call answers 202 or 503 with Retry-After, never 500; one log line per outage; the gateway
recovers by itself."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from shared.store import PostgresTriggerStore
from shared.triggers import trigger_call_url
from tests.support.databases import POSTGRES
from tests.support.processes import ServiceProcess, service_process

pytestmark = pytest.mark.slow

KILLS = 3
CALLERS = 4


@pytest.fixture
async def private_database() -> AsyncIterator[str]:
    """A database of this test's own: every backend in it is the gateway's or the test's."""
    name = f"triggers_kill_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(POSTGRES)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{POSTGRES.rsplit('/', 1)[0]}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def gateway_process(
    env: dict[str, str], private_database: str
) -> AsyncIterator[ServiceProcess]:
    """A `triggers gateway` on the private database; a 10 ms trigger cache, so that nearly
    every call reads the store."""
    settings = {
        **env,
        "TRIGGERS_DATABASE": private_database,
        "TRIGGERS_TRIGGER_CACHE_TTL": "0.01",
    }
    async with service_process(settings, "gateway") as gateway:
        yield gateway


async def _kill_backends(database: str) -> int:
    """`pg_terminate_backend` on every other connection to `database`; how many."""
    admin = await asyncpg.connect(database)
    try:
        killed: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    return killed


async def test_killed_postgresql_backends_are_503_or_success_never_500(
    gateway_process: ServiceProcess, private_database: str
) -> None:
    """Three rounds of every gateway backend killed while four callers call: each answer is
    202 or 503 + Retry-After, the store outage is logged at most once a round, and calls
    succeed again after each round without a restart."""
    store = PostgresTriggerStore(private_database)
    try:
        trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    finally:
        await store.close()
    url = trigger_call_url(gateway_process.url, trigger, secret)
    answers: collections.Counter[str] = collections.Counter()
    refusals_without_retry_after: list[str] = []
    accepted_since_kill = asyncio.Event()
    stop = asyncio.Event()

    async def caller(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with http.get(url) as response:
                body = await response.json()
                answers[f"{response.status} {body.get('error', body.get('status'))}"] += 1
                if response.status == 503 and "Retry-After" not in response.headers:
                    refusals_without_retry_after.append(str(body))
                if response.status == 202:
                    accepted_since_kill.set()

    killed = []
    async with aiohttp.ClientSession() as http:
        callers = [asyncio.create_task(caller(http)) for _ in range(CALLERS)]
        try:
            for _ in range(KILLS):
                async with asyncio.timeout(20):  # recovered: calls are accepted again
                    await accepted_since_kill.wait()
                await asyncio.sleep(0.5)
                killed.append(await _kill_backends(private_database))
                accepted_since_kill.clear()
            async with asyncio.timeout(20):
                await accepted_since_kill.wait()
        finally:
            stop.set()
            await asyncio.gather(*callers)
    events = collections.Counter(str(line.get("event")) for line in gateway_process.lines)
    print(
        f"killed {killed}; answers {dict(answers)}; store lines {events['gateway.store_unavailable']}"
    )
    assert all(count >= 2 for count in killed), killed  # the pool and the change listener
    unexpected = [
        line for line in gateway_process.lines if line.get("level") in ("error", "critical")
    ]
    assert set(answers) <= {"202 accepted", "503 store_unavailable"}, (answers, str(unexpected[:1]))
    assert not refusals_without_retry_after
    assert events["gateway.store_unavailable"] <= KILLS
    assert events["gateway.unhandled_error"] == 0
    assert not [line for line in gateway_process.lines if "Traceback" in str(line)]
