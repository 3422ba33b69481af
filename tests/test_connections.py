"""Connections to a real gateway process: deadlines for headers and bodies, a per-address cap,
and the HTTP parser's refusals answered in JSON without echoing the request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from shared.store import TriggerStore
from shared.triggers import new_secret
from tests.support.processes import ServiceProcess, service_process

pytestmark = pytest.mark.slow


@pytest.fixture
async def guarded(env: dict[str, str]) -> AsyncIterator[ServiceProcess]:
    """`triggers gateway` with one-second deadlines and a cap of five connections an address."""
    tight = {
        **env,
        "TRIGGERS_HEADER_TIMEOUT": "1",
        "TRIGGERS_BODY_TIMEOUT": "1",
        "TRIGGERS_MAX_CONNECTIONS_PER_ADDRESS": "5",
    }
    async with service_process(tight, "gateway") as gateway:
        yield gateway


async def _open(gateway: ServiceProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gateway.port)


async def _closed_by_server(reader: asyncio.StreamReader, within: float = 10.0) -> bytes:
    """Everything the server sent until it closed the connection."""
    async with asyncio.timeout(within):
        return await reader.read()


async def _logged(
    gateway: ServiceProcess, match: Callable[[dict[str, Any]], bool], within: float = 10.0
) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            for line in gateway.lines:
                if match(line):
                    return line
            await asyncio.sleep(0.05)


def _call_target(trigger_query: str) -> str:
    return f"/hook/trigger?{trigger_query}"


async def test_headers_that_never_finish_are_cut_off(guarded: ServiceProcess) -> None:
    """A connection trickling its headers is closed once the header timeout passes."""
    reader, writer = await _open(guarded)
    writer.write(b"GET /hook/trigger HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    await writer.drain()
    assert await _closed_by_server(reader) == b""
    writer.close()


async def test_a_wrong_secret_is_refused_before_the_body_is_read(
    guarded: ServiceProcess, store: TriggerStore
) -> None:
    """Headers with a wrong secret and a body that never comes: 403 at once."""
    trigger, _ = await store.create(cluster="demo", app="shop", action="redeploy")
    query = f"triggerUrl={_url_token(trigger)}&secret={new_secret()}"
    reader, writer = await _open(guarded)
    writer.write(
        f"POST {_call_target(query)} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{".encode()
    )
    await writer.drain()
    async with asyncio.timeout(5):
        status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 403")
    writer.close()


async def test_a_slow_body_with_the_right_secret_gets_408(
    guarded: ServiceProcess, store: TriggerStore
) -> None:
    """An authenticated call whose body stops arriving is answered 408 after the body timeout."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    query = f"triggerUrl={_url_token(trigger)}&secret={secret}"
    reader, writer = await _open(guarded)
    writer.write(
        f"POST {_call_target(query)} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{".encode()
    )
    await writer.drain()
    answer = await _closed_by_server(reader)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"body_timeout"' in answer
    writer.close()


async def test_idle_connections_over_the_cap_make_room_for_a_real_call(
    guarded: ServiceProcess,
) -> None:
    """Twenty silent connections from one address: the oldest are closed, a real call is served."""
    opened = [await _open(guarded) for _ in range(20)]
    async with aiohttp.ClientSession() as http, http.get(f"{guarded.url}/healthz") as response:
        assert response.status == 200
    closed = 0
    for reader, writer in opened[:15]:
        with contextlib.suppress(ConnectionError):
            if await _closed_by_server(reader, within=5) == b"":
                closed += 1
        writer.close()
    assert closed == 15
    for _, writer in opened[15:]:
        writer.close()


async def test_an_overlong_request_line_is_answered_in_json_without_echoing_it(
    guarded: ServiceProcess,
) -> None:
    """A 9 KB request target (where a secret may be) gets a JSON 400 that quotes none of it."""
    secret = new_secret()
    target = f"/hook/trigger?secret={secret}&pad={'x' * 9000}"
    reader, writer = await _open(guarded)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    answer = await _closed_by_server(reader)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert b"application/json" in head
    assert b"\r\nServer: container-triggers\r\n" in head  # no Python or aiohttp version
    assert body.endswith(b"}\n")
    assert json.loads(body)["error"] == "bad_http_request"
    assert secret.encode() not in answer
    assert b"xxxx" not in answer
    writer.close()
    line = await _logged(guarded, lambda ln: ln.get("event") == "gateway.bad_http_request")
    assert secret not in json.dumps(guarded.lines)
    assert "exception" not in line


async def test_an_aborted_body_is_one_log_line_without_a_traceback(
    guarded: ServiceProcess, store: TriggerStore
) -> None:
    """A caller who hangs up mid-body leaves a 400 request line, no unhandled error."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    query = f"triggerUrl={_url_token(trigger)}&secret={secret}"
    _, writer = await _open(guarded)
    writer.write(
        f"POST {_call_target(query)} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{".encode()
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler is reading the body when the caller hangs up
    writer.close()
    line = await _logged(
        guarded,
        lambda ln: ln.get("event") == "gateway.request" and ln.get("trigger_id") == trigger.id,
    )
    assert line["error"] == "incomplete_body"
    assert not [ln for ln in guarded.lines if ln.get("event") == "gateway.unhandled_error"]


def _url_token(trigger: Any) -> str:
    from shared.triggers import encode_trigger_url  # noqa: PLC0415 - test helper

    return encode_trigger_url(trigger.cluster, trigger.app, trigger.action, trigger.id)


async def test_a_callers_connection_is_kept_when_its_address_goes_over_the_cap(
    guarded: ServiceProcess, store: TriggerStore
) -> None:
    """A keep-alive connection that made an authenticated call, caught mid-headers by twenty
    new connections from its address, is not the one closed: its call is answered."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    request = (
        f"GET {_call_target(f'triggerUrl={_url_token(trigger)}&secret={secret}')} HTTP/1.1\r\n"
        "Host: x\r\n\r\n"
    ).encode()
    reader, writer = await _open(guarded)
    writer.write(request)
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 202"), head
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        assert length is not None
        await reader.readexactly(int(length[1]))
    writer.write(request[:20])  # the next call's first segment; the rest comes late
    await writer.drain()
    crowd = [await _open(guarded) for _ in range(20)]
    writer.write(request[20:])
    await writer.drain()
    async with asyncio.timeout(10):
        status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 202"), status
    writer.close()
    for _, other in crowd:
        other.close()
