"""The web console over HTTP: sign-in, sessions, CSRF, the live stream and the pages.

The browser tests (tests/browser/) drive the same console in Chromium; these pin the
protocol underneath without a browser, on the real broker and store.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from shared.broker import AmqpBus
from shared.messages import JobNotice, RolloutProgress, new_job_id, utcnow
from shared.settings import Settings
from shared.store import TriggerStore
from tests.support.broker import broker_queues
from tests.support.gateways import ADMIN_TOKEN, Gateway
from tests.support.messages import result_event


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This module's gateways have an admin token, so the console is on."""
    return settings.with_(admin_token=ADMIN_TOKEN)


_LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')
_CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')


async def sign_in(
    http: aiohttp.ClientSession, base: str, token: str = ADMIN_TOKEN
) -> aiohttp.ClientResponse:
    """Load the sign-in page, then post the token with the form's token; the answer."""
    async with http.get(f"{base}/ui") as page:
        found = _LOGIN_CSRF.search(await page.text())
    assert found is not None
    async with http.post(
        f"{base}/ui/login",
        data={"token": token, "login_csrf": found[1], "next": "/ui"},
        headers={"Origin": base},
        allow_redirects=False,
    ) as response:
        await response.read()
        return response


@pytest.fixture
async def browser(gateway: Gateway) -> AsyncIterator[aiohttp.ClientSession]:
    """A client with its own cookie jar, signed in to the console."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        response = await sign_in(http, gateway.url)
        assert response.status == 303
        yield http


async def csrf_of(http: aiohttp.ClientSession, base: str) -> str:
    """The session's CSRF token, as a console page carries it."""
    async with http.get(f"{base}/ui/triggers") as page:
        assert page.status == 200
        found = _CSRF.search(await page.text())
    assert found is not None
    return found[1]


async def test_without_a_session_every_page_is_the_sign_in_form_and_no_data(
    gateway: Gateway, bus: AmqpBus, store: TriggerStore
) -> None:
    """/ui and the other pages answer 401 with a password field and none of the data; the
    stream and the changes answer 401 JSON."""
    trigger, _ = await store.create(cluster="demo", app="shop", action="redeploy")
    for path in ("/ui", "/ui/jobs", "/ui/triggers", f"/ui/triggers/{trigger.id}", "/ui/charts"):
        async with gateway.http.get(f"{gateway.url}{path}") as response:
            text = await response.text()
            assert response.status == 401, path
            assert 'type="password"' in text
            # The page to come back to after signing in is all it knows of the request.
            assert trigger.id not in re.sub(r'name="next" value="[^"]*"', "", text)
            assert "demo/shop" not in text
            assert "Sign out" not in text
    async with gateway.http.get(f"{gateway.url}/ui/events") as response:
        assert response.status == 401
        assert (await response.json())["error"] == "unauthorized"
    async with gateway.http.post(
        f"{gateway.url}/ui/triggers/{trigger.id}/revoke", data={"confirm": "yes"}
    ) as response:
        assert response.status == 401
    assert (await store.get(trigger.id)).revoked_at is None  # type: ignore[union-attr]


async def test_sign_in_sets_a_strict_httponly_session_cookie_with_an_expiry(
    gateway: Gateway,
) -> None:
    """The admin token buys a session cookie: HttpOnly, SameSite=Strict, /ui only, expiring;
    a wrong token gets the form again and no cookie."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        wrong = await sign_in(http, gateway.url, token="not-the-token")
        assert wrong.status == 401
        assert "triggers_console" not in wrong.cookies
        right = await sign_in(http, gateway.url)
        assert right.status == 303
        assert right.headers["Location"] == "/ui"
        cookie = right.cookies["triggers_console"]
        assert cookie["httponly"]
        assert cookie["samesite"] == "Strict"
        assert cookie["path"] == "/ui"
        assert int(cookie["max-age"]) == int(gateway.settings.console_session_ttl)
        assert cookie["expires"]
        assert ADMIN_TOKEN not in cookie.value
        async with http.get(f"{gateway.url}/ui") as page:
            assert page.status == 200
            assert "Live results" in await page.text()


async def test_a_change_without_the_csrf_token_or_from_another_origin_is_refused(
    gateway: Gateway, browser: aiohttp.ClientSession, store: TriggerStore
) -> None:
    """With a valid session, a POST without the CSRF token, with a wrong one, or from another
    origin is 403 and changes nothing; with the token it goes through."""
    trigger, _ = await store.create(cluster="demo", app="shop", action="redeploy")
    url = f"{gateway.url}/ui/triggers/{trigger.id}/revoke"
    token = await csrf_of(browser, gateway.url)
    attempts: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"confirm": "yes"}, {"Origin": gateway.url}),
        ({"confirm": "yes", "csrf": "0" * 64}, {"Origin": gateway.url}),
        ({"confirm": "yes", "csrf": token}, {"Origin": "http://127.0.0.1:1"}),
        ({"confirm": "yes", "csrf": token}, {"Sec-Fetch-Site": "cross-site"}),
    ]
    for data, headers in attempts:
        async with browser.post(url, data=data, headers=headers, allow_redirects=False) as answer:
            assert answer.status == 403, (data, headers)
            assert (await answer.json())["error"] == "csrf_refused"
    assert (await store.get(trigger.id)).revoked_at is None  # type: ignore[union-attr]
    async with browser.post(
        url,
        data={"confirm": "yes", "csrf": token},
        headers={"Origin": gateway.url},
        allow_redirects=False,
    ) as answer:
        assert answer.status == 303
    assert (await store.get(trigger.id)).revoked_at is not None  # type: ignore[union-attr]


async def test_sign_out_ends_the_session_even_for_a_copied_cookie(
    gateway: Gateway, browser: aiohttp.ClientSession
) -> None:
    """After sign-out the old session cookie, replayed by hand, gets the sign-in form."""
    cookie = next(c for c in browser.cookie_jar if c.key == "triggers_console").value
    token = await csrf_of(browser, gateway.url)
    async with browser.post(
        f"{gateway.url}/ui/logout",
        data={"csrf": token},
        headers={"Origin": gateway.url},
        allow_redirects=False,
    ) as answer:
        assert answer.status == 303
    async with gateway.http.get(
        f"{gateway.url}/ui/jobs", headers={"Cookie": f"triggers_console={cookie}"}
    ) as response:
        assert response.status == 401


async def test_changing_the_admin_token_ends_every_session(
    gateway: Gateway, browser: aiohttp.ClientSession, store: TriggerStore, bus: AmqpBus
) -> None:
    """A gateway with another admin token (same database) does not take the old sessions."""
    cookie = next(c for c in browser.cookie_jar if c.key == "triggers_console").value
    changed = gateway.settings.with_(admin_token="another-admin-token-8c1d")
    server = TestServer(create_app(changed, store=store, bus=bus), host="127.0.0.1")
    await server.start_server()
    try:
        async with gateway.http.get(
            str(server.make_url("/ui/jobs")), headers={"Cookie": f"triggers_console={cookie}"}
        ) as response:
            assert response.status == 401
    finally:
        await server.close()


class _Stream:
    """An SSE client: its events as (id, event, data) in order."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, kind: str = "result", within: float = 5.0) -> tuple[str, Any]:
        """The next event of this kind: its id and decoded data."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(within):
            async for raw in self.response.content:
                line = raw.decode().rstrip("\n")
                if line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                    continue
                if fields.get("event") == kind:
                    return fields.get("id", ""), msgspec.json.decode(fields["data"])
                fields = {}
        msg = "the stream ended"
        raise AssertionError(msg)


async def _open(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> _Stream:
    response = await http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=None))
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    stream = _Stream(response)
    await stream.next("ready")
    return stream


async def test_tabs_share_one_subscription_and_get_every_result(
    gateway: Gateway, browser: aiohttp.ClientSession, bus: AmqpBus
) -> None:
    """Three tabs on one gateway get the same result, through one results queue of the
    gateway's besides its wait=N queue, not one per tab."""
    tabs = [await _open(browser, f"{gateway.url}/ui/events") for _ in range(3)]
    job_id = new_job_id()
    await bus.publish_result(result_event(job_id))
    for tab in tabs:
        _, data = await tab.next()
        assert data["job"] == job_id
        assert job_id[:8] in data["row"]
        assert "s-succeeded" in data["row"]
    own = [q for q in broker_queues(gateway.settings.amqp_url) if ".test-gateway." in q]
    assert len(own) == 2, own
    for tab in tabs:
        tab.response.close()


async def test_a_tab_that_reconnects_with_last_event_id_gets_what_it_missed(
    gateway: Gateway, browser: aiohttp.ClientSession, bus: AmqpBus
) -> None:
    """Events published while a tab was away come first on its reconnect, in order, and the
    stream's filters hold for them too."""
    tab = await _open(browser, f"{gateway.url}/ui/events?app=shop")
    first = new_job_id()
    await bus.publish_result(result_event(first))
    last_id, data = await tab.next()
    assert data["job"] == first
    # Published and confirmed is not yet delivered to the gateway: a tab that stays
    # tells when the gateway has them.
    watcher = await _open(browser, f"{gateway.url}/ui/events")
    tab.response.close()
    missed = [new_job_id() for _ in range(3)]
    await bus.publish_result(result_event(missed[0]))
    await bus.publish_result(result_event(new_job_id(), app="other"))
    await bus.publish_result(result_event(missed[1]))
    await bus.publish_result(result_event(missed[2]))
    for _ in range(4):
        await watcher.next()
    watcher.response.close()
    again = await _open(browser, f"{gateway.url}/ui/events?app=shop", {"Last-Event-ID": last_id})
    assert [(await again.next())[1]["job"] for _ in missed] == missed
    again.response.close()


async def test_a_reconnect_the_ring_cannot_serve_is_answered_from_the_history(
    gateway: Gateway, browser: aiohttp.ClientSession, jobs: Any
) -> None:
    """A Last-Event-ID from another gateway process replays the results recorded since its
    time, from the job history."""
    from shared.jobs import JobRecord  # noqa: PLC0415

    event = result_event(new_job_id())
    await jobs.record(JobRecord.from_event(event))
    millis = int(event.finished_at.timestamp() * 1000) - 500
    tab = await _open(
        browser, f"{gateway.url}/ui/events", {"Last-Event-ID": f"otherboot.17.{millis}"}
    )
    assert (await tab.next())[1]["job"] == event.job_id
    tab.response.close()


async def test_the_pages_render_for_a_signed_in_operator(
    gateway: Gateway, browser: aiohttp.ClientSession, jobs: Any
) -> None:
    """Jobs (with the history's filters), a job, triggers, charts and approvals render; a bad
    filter is a 400 page that says what to fix."""
    from shared.jobs import JobRecord  # noqa: PLC0415

    event = result_event(new_job_id())
    await jobs.record(JobRecord.from_event(event))
    for path, expected in (
        ("/ui/jobs?app=shop&status=succeeded&since=1h", event.job_id[:8]),
        (f"/ui/jobs/{event.job_id}", event.correlation_id),
        ("/ui/triggers", "New trigger"),
        ("/ui/charts", "<svg"),
        ("/ui/charts?cluster=demo&app=shop&service=web", "Replicas of demo/shop/web"),
        ("/ui/approvals", "Approvals"),
    ):
        async with browser.get(f"{gateway.url}{path}") as response:
            assert response.status == 200, path
            assert expected in await response.text(), path
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    async with browser.get(f"{gateway.url}/ui/jobs?since=yesterday-ish") as response:
        assert response.status == 400
        assert "since must be a duration" in await response.text()
    async with browser.get(f"{gateway.url}/ui/jobs/{'f' * 32}") as response:
        assert response.status == 404


async def test_a_held_call_is_approved_from_the_console_by_two_people(
    gateway: Gateway, browser: aiohttp.ClientSession
) -> None:
    """A call to a trigger needing two approvals is listed; one approval leaves it waiting,
    the second (another name) runs it; a decision needs the CSRF token like any change."""
    status, created = await gateway.admin(
        "POST",
        "/v1/triggers",
        {"cluster": "demo", "app": "shop", "action": "scale", "service": "web", "approvals": 2},
    )
    assert status == 201, created
    url = f"{gateway.call_url_for(created)}&type=scale_out&step=1"
    async with gateway.http.post(url) as call:
        held = await call.json()
    assert held["status"] == "pending_approval", held
    job_id = held["job_id"]
    async with browser.get(f"{gateway.url}/ui/approvals") as page:
        assert job_id[:8] in await page.text()
    token = await csrf_of(browser, gateway.url)
    approve = f"{gateway.url}/ui/approvals/{job_id}/approve"
    headers = {"Origin": gateway.url}
    async with browser.post(approve, data={"approver": "ana"}, headers=headers) as refused:
        assert refused.status == 403
    for name in ("ana", "ben"):
        async with browser.post(
            approve, data={"approver": name, "csrf": token}, headers=headers, allow_redirects=False
        ) as answer:
            assert answer.status == 303, await answer.text()
        _, approval = await gateway.admin("GET", f"/v1/approvals/{job_id}")
        assert name in approval["approvers"]
    assert approval["state"] == "approved"
    async with browser.get(f"{gateway.url}/ui/approvals") as page:
        assert job_id[:8] not in await page.text()


async def test_the_policy_form_sets_and_clears_request_id_idempotency(
    gateway: Gateway, browser: aiohttp.ClientSession, store: TriggerStore
) -> None:
    """The trigger page's policy form shows the X-Request-ID box and saves it checked and not."""
    trigger, _ = await store.create(cluster="demo", app="shop", action="redeploy")
    token = await csrf_of(browser, gateway.url)
    url = f"{gateway.url}/ui/triggers/{trigger.id}/policy"
    headers = {"Origin": gateway.url}
    for checked in (True, False):
        data = {"csrf": token, "enabled": "on", "allowed_methods": "GET"}
        if checked:
            data["request_id_idempotency"] = "on"
        async with browser.post(url, data=data, headers=headers, allow_redirects=False) as answer:
            assert answer.status == 303, await answer.text()
        saved = await store.get(trigger.id)
        assert saved is not None
        assert saved.request_id_idempotency is checked
        async with browser.get(f"{gateway.url}/ui/triggers/{trigger.id}") as page:
            text = await page.text()
        assert ('name="request_id_idempotency" checked' in text) is checked


async def test_the_live_view_shows_a_rollout_running_then_its_result(
    gateway: Gateway, browser: aiohttp.ClientSession, bus: AmqpBus, jobs: Any
) -> None:
    """A job's `running` notices reach the live stream as a running row with the rollout's progress (`2/3 updated`), then its result replaces that row; a page opened mid-rollout lists the job running with its last progress, and so does the job's page."""
    from shared.jobs import JobRecord  # noqa: PLC0415

    tab = await _open(browser, f"{gateway.url}/ui/events")
    event = msgspec.structs.replace(result_event(new_job_id()), action="redeploy", service="web")
    notice = JobNotice(
        job_id=event.job_id, trigger_id=event.trigger_id, action="redeploy", cluster="demo",
        app="shop", service="web", progress={"web": RolloutProgress(updated=2, total=3)},
        progress_at=utcnow(),
    )  # fmt: skip
    await bus.publish_notice(notice)
    _, running = await tab.next()
    assert (running["job"], running["status"]) == (event.job_id, "running")
    assert "s-running" in running["row"]
    assert "2/3 updated" in running["row"]
    await jobs.record(JobRecord.from_event(notice))
    for path in ("/ui", f"/ui/jobs/{event.job_id}"):
        async with browser.get(f"{gateway.url}{path}") as response:
            page = await response.text()
        assert response.status == 200, path
        assert "2/3 updated" in page, path
    await bus.publish_result(event)
    _, done = await tab.next()
    assert (done["job"], done["status"]) == (event.job_id, "succeeded")
    tab.response.close()
