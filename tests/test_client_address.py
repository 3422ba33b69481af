"""The caller's address behind a proxy: believed only from `TRIGGERS_TRUSTED_PROXIES`.

The gateway's peer here is always 127.0.0.1 (the test client); other loopback addresses
stand for the clients a proxy reports.
"""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from shared.broker import AmqpBus
from shared.jobs import JobStore
from shared.settings import Settings, parse_networks
from shared.store import TriggerStore
from shared.triggers import new_secret
from tests.support.gateways import Gateway, running_gateways

pytestmark = pytest.mark.unit


async def _status(gateway: Gateway, url: str, headers: dict[str, str]) -> int:
    async with gateway.http.get(url, headers=headers) as response:
        await response.read()
        return response.status


async def _audited_remotes(store: TriggerStore, trigger_id: str, count: int) -> list[str | None]:
    """The audited addresses of the trigger's calls, oldest first, once `count` are written."""
    for _ in range(100):
        entries = await store.list_audit(trigger_id=trigger_id)
        if len(entries) >= count:
            return [e.remote for e in reversed(entries)]
        await asyncio.sleep(0.05)
    raise AssertionError("the audit entries were not written")


async def test_forwarded_headers_are_ignored_without_trusted_proxies(
    gateway: Gateway, store: TriggerStore
) -> None:
    """A caller rotating spoofed X-Forwarded-For / Forwarded values is still limited by its
    own address, and the audit shows the real peer; the right secret is never refused."""
    limit = gateway.settings.auth_failures_per_minute
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    wrong = gateway.call_url(trigger, new_secret())
    statuses = []
    for i in range(limit + 2):
        spoofed = {
            "X-Forwarded-For": f"127.0.{i // 250}.{i % 250 + 2}",
            "Forwarded": f"for=127.1.0.{i % 250 + 2}",
        }
        statuses.append(await _status(gateway, wrong, spoofed))
    assert statuses == [403] * limit + [429] * 2
    # Unauthenticated rejections are audited one entry per address and minute.
    remotes = await _audited_remotes(store, trigger.id, 1)
    assert set(remotes) == {"127.0.0.1"}
    correct = gateway.call_url(trigger, secret)
    assert await _status(gateway, correct, {"X-Forwarded-For": "127.0.0.9"}) == 202


async def test_trusted_proxy_reports_the_client_for_lockout_audit_logs_and_jobs(
    settings: Settings, store: TriggerStore, bus: AmqpBus, jobs: JobStore
) -> None:
    """From a trusted proxy, the X-Forwarded-For client is the one limited, audited, logged
    and recorded as the job's source; another client behind it is not limited."""
    trusted = settings.with_(trusted_proxies=parse_networks("127.0.0.1/32"))
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    async with running_gateways(trusted, store, bus, 1) as (gateway,):
        limit = trusted.auth_failures_per_minute
        wrong = gateway.call_url(trigger, new_secret())
        # What the client wrote itself sits left of what the proxy appended: never read.
        guesser = {"X-Forwarded-For": "127.0.0.77, 127.0.0.2"}
        for _ in range(limit):
            assert await _status(gateway, wrong, guesser) == 403
        assert await _status(gateway, wrong, {"X-Forwarded-For": "127.0.0.55, 127.0.0.2"}) == 429
        assert await _status(gateway, wrong, {"X-Forwarded-For": "127.0.0.3"}) == 403
        right = gateway.call_url(trigger, secret)
        with capture_logs() as logs:
            async with gateway.http.get(right, headers={"X-Forwarded-For": "127.0.0.3"}) as answer:
                assert answer.status == 202
                job_id = (await answer.json())["job_id"]
        await _audited_remotes(store, trigger.id, 3)
        entries = await store.list_audit(trigger_id=trigger.id)
    # Unauthenticated rejections: one entry per address and minute (the rest are tallied).
    assert {e.remote for e in entries if e.outcome == "rejected"} == {"127.0.0.2", "127.0.0.3"}
    assert [e.remote for e in entries if e.outcome == "accepted"] == ["127.0.0.3"]
    assert [e["remote"] for e in logs if e["event"] == "gateway.request"] == ["127.0.0.3"]
    for _ in range(100):
        job = await jobs.get(job_id)
        if job is not None:
            break
        await asyncio.sleep(0.05)
    assert job is not None
    assert job.source.remote == "127.0.0.3"


@pytest.mark.parametrize(
    ("header", "headers", "client"),
    [
        # Several proxies: every trusted hop is skipped from the right.
        ("x-forwarded-for", {"X-Forwarded-For": "127.0.0.4, 127.0.0.1, 127.0.0.1"}, "127.0.0.4"),
        # An entry that is not an address stops the walk at the proxy that passed it on.
        ("x-forwarded-for", {"X-Forwarded-For": "127.0.0.4, not-an-address"}, "127.0.0.1"),
        ("forwarded", {"Forwarded": 'for="[::1]:4711", for=127.0.0.5:80'}, "127.0.0.5"),
        ("forwarded", {"Forwarded": "for=127.0.0.6;proto=https"}, "127.0.0.6"),
        # A proxy that writes Forwarded passes a client's X-Forwarded-For on untouched.
        ("forwarded", {"X-Forwarded-For": "127.0.0.7"}, "127.0.0.1"),
        ("x-forwarded-for", {"Forwarded": "for=127.0.0.8"}, "127.0.0.1"),
    ],
)
async def test_proxy_header_is_read_as_configured(
    settings: Settings,
    store: TriggerStore,
    bus: AmqpBus,
    header: str,
    headers: dict[str, str],
    client: str,
) -> None:
    """`TRIGGERS_PROXY_HEADER` names the one header believed; hops are read from the right."""
    trusted = settings.with_(
        trusted_proxies=parse_networks("127.0.0.1, ::1/128"), proxy_header=header
    )
    trigger, _ = await store.create(cluster="demo", app="shop", action="redeploy")
    async with running_gateways(trusted, store, bus, 1) as (gateway,):
        assert await _status(gateway, gateway.call_url(trigger, new_secret()), headers) == 403
        assert await _audited_remotes(store, trigger.id, 1) == [client]


def test_trusted_proxies_setting_names_a_bad_entry() -> None:
    """A value that is not an address or CIDR fails at start, naming the variable and entry."""
    env = {"TRIGGERS_TRUSTED_PROXIES": "127.0.0.1/32, ingress"}
    with pytest.raises(ValueError, match=r"TRIGGERS_TRUSTED_PROXIES: 'ingress' is not"):
        Settings.from_env(env)
    parsed = Settings.from_env({"TRIGGERS_TRUSTED_PROXIES": "127.0.0.1, ::1/128"})
    assert [str(n) for n in parsed.trusted_proxies] == ["127.0.0.1/32", "::1/128"]
    with pytest.raises(ValueError, match="TRIGGERS_PROXY_HEADER"):
        Settings.from_env({"TRIGGERS_PROXY_HEADER": "x-real-ip"})
