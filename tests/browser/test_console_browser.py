"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright,
against `triggers gateway`, `triggers worker` and `triggers recorder` on RabbitMQ.

Never `playwright install`: the browser is the system's /usr/bin/chromium (.ci/run
installs it). With ``TRIGGERS_SCREENSHOTS=docs/console`` the tests also save the pictures
the docs show.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from tests.support.gateways import ADMIN_TOKEN
from tests.support.processes import free_port, service_process
from workers.orchestrators.local import LocalOrchestrator

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@dataclass
class Console:
    """The running services and a signed-out browser context."""

    url: str
    browser: BrowserContext
    http: aiohttp.ClientSession
    shots: Path

    async def shot(self, page: Page, name: str) -> None:
        """Save a screenshot of the page as `<name>.png`."""
        await page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def local(self, url: str) -> str:
        """A printed trigger URL (public URL base) pointed at this gateway."""
        return f"{self.url}/hook/trigger?{url.split('?', 1)[1]}"

    async def call(self, url: str, extra: str = "") -> tuple[int, dict[str, Any], str]:
        """Call a trigger as curl would: the status, the JSON answer and its X-Request-ID."""
        async with self.http.post(self.local(url) + extra) as response:
            return response.status, await response.json(), response.headers.get("X-Request-ID", "")


@contextlib.asynccontextmanager
async def chromium(user_data: Path) -> AsyncIterator[BrowserContext]:
    """Debian's Chromium with a fresh profile; a missing one fails the test (not a skip)."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: .ci/run installs it"  # noqa: ASYNC240 - once, before the browser starts
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(user_data),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=LAPTOP,  # type: ignore[arg-type]  # a dict of the ViewportSize keys
        )
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: TRIGGERS_SCREENSHOTS (docs/console for the docs), else a temp dir."""
    folder = Path(os.environ.get("TRIGGERS_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
async def console(
    env: dict[str, str], cluster: LocalOrchestrator, shots: Path
) -> AsyncIterator[Console]:
    """Gateway, worker and recorder as subprocesses, and Chromium with a fresh profile."""
    env = {**env, "TRIGGERS_ADMIN_TOKEN": ADMIN_TOKEN}
    async with (
        service_process(env, "worker"),
        service_process(env, "recorder"),
        service_process(env, "gateway") as gateway,
        aiohttp.ClientSession() as http,
    ):
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            async with chromium(Path(profile)) as browser:
                yield Console(gateway.url, browser, http, shots)


async def sign_in(console: Console, page: Page) -> None:
    """Sign in through the form, as a person would (type the token, press Enter)."""
    await page.goto(f"{console.url}/ui")
    await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await page.get_by_label("Admin token").press("Enter")
    await expect(page.get_by_role("heading", name="Live results")).to_be_visible()


async def every_field_is_labelled(page: Page) -> None:
    """Each visible form field has a label (or an aria-label) a screen reader can read."""
    unlabelled = await page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
            .map(e => e.name)"""
    )
    assert unlabelled == [], f"{page.url}: {unlabelled}"


async def _create(console: Console, page: Page) -> tuple[str, str]:
    """Create a scaling trigger in the form; its id and URL (shown once)."""
    # Create a scaling trigger; the URL and secret are shown once, with the curl lines.
    await page.get_by_role("link", name="Triggers", exact=True).click()
    await page.get_by_role("link", name="New trigger").click()
    await every_field_is_labelled(page)
    await page.get_by_label("Cluster").fill("demo")
    await page.get_by_label("App").fill("shop")
    await page.get_by_label("Action").select_option("scale")
    await page.get_by_label("Service").fill("web")
    await page.get_by_label("Max replicas").fill("20")
    await page.get_by_role("button", name="Create trigger").click()
    await expect(page.get_by_role("heading", name=re.compile("Trigger created"))).to_be_visible()
    url = await page.locator("#trigger-url").inner_text()
    secret = await page.locator("#trigger-secret").inner_text()
    assert url.endswith(f"&secret={secret}")
    curl = await page.locator(".curl code").all_inner_texts()
    assert curl == [
        f"curl -X POST '{url}&type=scale_out&step=1'",
        f"curl -X POST '{url}&type=scale_in&step=1'",
    ]
    await expect(page.get_by_role("button", name="Copy URL")).to_be_visible()
    await console.shot(page, "trigger-created")
    trigger_id = await page.locator("h1 code").inner_text()
    return trigger_id, url


async def _watch(console: Console, page: Page, url: str) -> tuple[str, str]:
    """Call the trigger with the live view open; the job id and the call's request id."""
    # The live view: a call's result shows up at the top within 2 s, coloured by status.
    await page.get_by_role("link", name="Live", exact=True).click()
    await expect(page.locator("#live-status")).to_contain_text("Live:")
    status, answer, request_id = await console.call(url, "&type=scale_out&step=2")
    assert status == 202, answer
    job_id = answer["job_id"]
    row = page.locator(f'tr[data-job="{job_id}"]')
    await expect(row).to_be_visible(timeout=2000)
    await expect(row).to_have_class(re.compile("s-succeeded"))
    await expect(row).to_contain_text(job_id[:8])
    await expect(row).to_contain_text("web 2 → 4 replicas")
    await console.shot(page, "live")
    return job_id, request_id


async def _pause(console: Console, page: Page, url: str) -> None:
    """Pause and resume by keyboard; then the view on a phone."""
    # Paused, a new result waits (counted) and shows on resume; the keyboard works the button.
    await page.get_by_role("button", name="Pause").focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("button", name="Resume")).to_have_attribute(
        "aria-pressed", "true"
    )
    status, second, _ = await console.call(url, "&type=scale_in&step=1")
    assert status == 202
    await expect(page.locator("#held")).to_have_text("1 new while paused")
    await expect(page.locator(f'tr[data-job="{second["job_id"]}"]')).to_have_count(0)
    await page.keyboard.press("Enter")
    await expect(page.locator(f'tr[data-job="{second["job_id"]}"]')).to_be_visible()
    await expect(page.locator("#live tbody tr").first).to_have_attribute(
        "data-job", second["job_id"]
    )

    # The same view on a phone.
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]  # ViewportSize keys
    await console.shot(page, "live-phone")
    await page.set_viewport_size(LAPTOP)  # type: ignore[arg-type]  # ViewportSize keys


async def _job(console: Console, page: Page, job_id: str, request_id: str) -> None:
    """The job page from its row, then the history with filters."""
    # The job: timeline, before/after, source, correlation id.
    await page.locator(f'tr[data-job="{job_id}"]').get_by_role("link").click()
    await expect(page.get_by_role("heading", name=re.compile(f"Job {job_id[:8]}"))).to_be_visible()
    timeline = page.locator(".timeline")
    for step in ("issued", "accepted", "succeeded"):
        await expect(timeline).to_contain_text(step)
    changed = page.locator("table.diff tr.changed")
    await expect(changed).to_have_count(1)
    await expect(changed).to_contain_text("replicas")
    await expect(changed).to_contain_text("4")
    await expect(page.locator(".facts").first).to_contain_text(request_id)
    await expect(page.locator("main")).to_contain_text("Python/3")  # the caller's user agent
    await console.shot(page, "job")

    # History with the same filters as `triggers history`.
    await page.goto(f"{console.url}/ui/jobs?cluster=demo&app=shop&action=scale&since=1h")
    await expect(page.locator("table.results tbody tr")).to_have_count(2)
    await every_field_is_labelled(page)
    await console.shot(page, "jobs")


async def _rotate(console: Console, page: Page, trigger_id: str, url: str) -> str:
    """Rotate without grace, then save a policy; the new URL."""
    # Rotate with no grace: the old secret is refused at once, the new one works.
    await page.goto(f"{console.url}/ui/triggers/{trigger_id}")
    await page.get_by_label("Old secret keeps working for (seconds)").fill("0")
    await page.get_by_role("button", name="Rotate").click()
    await expect(page.get_by_role("heading", name=re.compile("Secret rotated"))).to_be_visible()
    rotated = await page.locator("#trigger-url").inner_text()
    assert rotated != url
    assert (await console.call(url))[0] == 403
    assert (await console.call(rotated, "&type=scale_out&step=1"))[0] == 202

    # Policy: saved as a whole from the form.
    await page.goto(f"{console.url}/ui/triggers/{trigger_id}")
    await page.get_by_label("Cooldown (seconds)").fill("30")
    await page.get_by_role("button", name="Save policy").click()
    await expect(page.get_by_role("status")).to_contain_text("Policy saved")
    await expect(page.locator(".facts")).to_contain_text("cooldown 30s")
    await every_field_is_labelled(page)
    await console.shot(page, "trigger")
    return rotated


async def _revoke(console: Console, page: Page, trigger_id: str, rotated: str) -> None:
    """Revoke after confirming; then the triggers, charts and dead-letter pages."""
    # Revoke asks first; then every call is refused.
    await page.get_by_role("button", name="Revoke…").click()
    await expect(page.get_by_role("heading", name=re.compile("Revoke trigger"))).to_be_visible()
    await page.get_by_role("button", name="Yes, revoke it").click()
    await expect(page.get_by_role("status")).to_contain_text("Revoked")
    assert (await console.call(rotated, "&type=scale_out&step=1"))[0] == 403

    await page.get_by_role("link", name="Triggers", exact=True).click()
    await page.get_by_label("Status").select_option("all")
    await page.get_by_role("button", name="Show").click()
    await expect(page.locator(f"tr:has-text('{trigger_id}')")).to_contain_text("revoked")
    await console.shot(page, "triggers")

    await page.get_by_role("link", name="Charts").click()
    await expect(page.locator("svg.chart")).to_have_count(3)
    await expect(page.locator("main")).to_contain_text("Replicas of demo/shop/web")
    await console.shot(page, "charts")
    await page.get_by_role("link", name="Dead letters").click()
    await expect(page.get_by_role("heading", name="Dead letters")).to_be_visible()
    await console.shot(page, "dead-letters")


async def _sign_out(console: Console, page: Page, job_id: str) -> None:
    """Sign out: the pages are the sign-in form again."""
    # Sign out: the pages are the sign-in form again.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Admin token")).to_be_visible()
    response = await page.goto(f"{console.url}/ui/jobs")
    assert response is not None
    assert response.status == 401
    await expect(page.locator("main")).not_to_contain_text(job_id[:8])


async def test_an_operator_creates_watches_rotates_and_revokes_a_trigger(
    console: Console,
) -> None:
    """Sign in, create a trigger, call it: its result is in the live view within 2 s; open the
    job, rotate and revoke; the old secret then fails; sign out."""
    page = await console.browser.new_page()
    await page.goto(f"{console.url}/ui")
    # Without a session: only the sign-in form, a password field, no data.
    await expect(page.get_by_label("Admin token")).to_have_attribute("type", "password")
    await expect(page.locator("table")).to_have_count(0)
    await console.shot(page, "signin")
    await sign_in(console, page)

    trigger_id, url = await _create(console, page)
    job_id, request_id = await _watch(console, page, url)
    await _pause(console, page, url)
    await _job(console, page, job_id, request_id)
    rotated = await _rotate(console, page, trigger_id, url)
    await _revoke(console, page, trigger_id, rotated)
    await _sign_out(console, page, job_id)


async def test_requests_without_a_session_and_csrf_attempts_are_refused(
    console: Console, tmp_path: Path
) -> None:
    """A signed-out request gets no data; a page of another origin that posts a revoke form
    to the console of a signed-in browser is refused (403) and revokes nothing."""
    async with console.http.post(
        f"{console.url}/v1/triggers",
        json={"cluster": "demo", "app": "shop", "action": "redeploy"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as response:
        trigger_id = (await response.json())["id"]
    async with console.http.get(f"{console.url}/ui/triggers") as response:
        assert response.status == 401
        assert trigger_id not in await response.text()
    async with console.http.post(
        f"{console.url}/ui/triggers/{trigger_id}/revoke", data={"confirm": "yes"}
    ) as response:
        assert response.status == 401

    # Another origin on the same host (same site: SameSite alone would not stop it).
    forged = f"""<!doctype html><form id=f method=post
        action="{console.url}/ui/triggers/{trigger_id}/revoke">
        <input name=confirm value=yes></form><script>f.submit()</script>"""

    async def attack(request: web.Request) -> web.Response:
        return web.Response(text=forged, content_type="text/html")

    attacker = web.Application()
    attacker.router.add_get("/", attack)
    runner = web.AppRunner(attacker)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        page = await console.browser.new_page()
        await sign_in(console, page)
        async with page.expect_response(re.compile(r"/revoke$")) as refused:
            await page.goto(f"http://127.0.0.1:{port}/")
        answer = await refused.value
        assert answer.status == 403
        assert json.loads(await answer.text())["error"] == "csrf_refused"
    finally:
        await runner.cleanup()
    async with console.http.get(
        f"{console.url}/v1/triggers/{trigger_id}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as response:
        assert (await response.json())["status"] == "active"
