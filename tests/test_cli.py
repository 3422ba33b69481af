"""The `triggers` command line, run as a user runs it."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from shared.broker import AmqpBus
from tests.support.cli import triggers_cli
from tests.support.processes import free_port
from tests.support.waiting import eventually
from tests.test_console import sign_in as console_sign_in


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `triggers ARGS` and return what it printed."""
    return subprocess.run(
        [*triggers_cli(), *args], env=env, capture_output=True, text=True, timeout=60, check=check
    )


def test_create_json_prints_a_callable_url_once(env: dict[str, str]) -> None:
    """`create --json` prints id, url (secret included), secret and the target; list hides the secret."""
    created = json.loads(
        run(
            env,
            *[
                "create",
                "--cluster",
                "demo",
                "--app",
                "shop",
                "--action",
                "scale",
                "--service",
                "web",
                "--json",
            ],
        ).stdout
    )
    assert {"id", "url", "secret", "cluster", "app", "action", "service"} <= set(created)
    assert (created["cluster"], created["app"], created["action"], created["service"]) == (
        "demo",
        "shop",
        "scale",
        "web",
    )
    assert re.fullmatch(r"[0-9a-f]{64}", created["secret"])
    assert created["url"].startswith("http://127.0.0.1:8080/hook/trigger?triggerUrl=")
    assert created["url"].endswith(f"&secret={created['secret']}")

    listed = run(env, "list", "--json").stdout
    assert created["secret"] not in listed
    assert [t["id"] for t in json.loads(listed)] == [created["id"]]
    shown = json.loads(run(env, "show", created["id"], "--json").stdout)
    assert shown["status"] == "active"
    assert "secret" not in shown

    table = run(env, "list").stdout
    assert created["id"] in table
    assert "ACTION" in table


def test_create_refuses_bad_input_with_a_usable_message(env: dict[str, str]) -> None:
    """A scale trigger without --service, or a name with a '|', is refused and nothing is stored."""
    no_service = run(
        env, "create", "--cluster", "demo", "--app", "shop", "--action", "scale", check=False
    )
    assert no_service.returncode == 2
    assert "--service" in no_service.stderr
    bad_name = run(
        env, "create", "--cluster", "de|mo", "--app", "shop", "--action", "redeploy", check=False
    )
    assert bad_name.returncode == 2
    assert "not a valid name" in bad_name.stderr
    assert json.loads(run(env, "list", "--json").stdout) == []


def test_revoke_and_show_unknown(env: dict[str, str]) -> None:
    """Revoking marks the trigger revoked; an unknown id is a clear error, exit 1."""
    created = json.loads(
        run(
            env, "create", "--cluster", "demo", "--app", "shop", "--action", "redeploy", "--json"
        ).stdout
    )
    revoked = json.loads(run(env, "revoke", created["id"], "--json").stdout)
    assert revoked["status"] == "revoked"
    assert json.loads(run(env, "list", "--json").stdout) == []
    assert len(json.loads(run(env, "list", "--all", "--json").stdout)) == 1
    missing = run(env, "show", "nosuchtrigger1", check=False)
    assert missing.returncode == 1
    assert "no trigger" in missing.stderr


def _set_app(
    env: dict[str, str], service: str, replicas: str, *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(env, "local", "set-app", "--cluster", "c1", "--app", "blog", "--service", service,
               "--replicas", replicas, *extra, check=check)  # fmt: skip


def test_local_set_app_and_show(env: dict[str, str]) -> None:
    """`local set-app` seeds services; `local show --json` prints the contract's shape."""
    _set_app(env, "web", "3", "--image", "nginx:1.27")
    _set_app(env, "db", "1")
    _set_app(env, "web", "4")
    shown = json.loads(run(env, "local", "show", "--json").stdout)
    assert shown == {
        "clusters": {
            "c1": {
                "apps": {
                    "blog": {
                        "services": {
                            "db": {"replicas": 1, "image": "db:latest", "revision": 1},
                            "web": {"replicas": 4, "image": "nginx:1.27", "revision": 1},
                        }
                    }
                }
            }
        }
    }
    negative = _set_app(env, "web", "-1", check=False)
    assert negative.returncode == 2


@pytest.fixture
def gateway_process(env: dict[str, str]) -> Iterator[str]:
    """`triggers gateway` as a separate process, with its default cache settings."""
    port = free_port()
    process = subprocess.Popen(
        [*triggers_cli(), "gateway", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url) as response:
            return response.status
    except aiohttp.ClientConnectionError:
        return 0


@pytest.mark.slow
async def test_revocation_takes_effect_within_seconds_on_a_running_gateway(
    env: dict[str, str], gateway_process: str
) -> None:
    """A trigger revoked with the CLI stops working on a running gateway within 5 seconds."""
    created = json.loads(
        run(
            {**env, "TRIGGERS_PUBLIC_URL": gateway_process},
            "create",
            "--cluster",
            "demo",
            "--app",
            "shop",
            "--action",
            "redeploy",
            "--json",
        ).stdout
    )
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(30):
            while (status := await _status(http, created["url"])) != 202:
                await asyncio.sleep(0.2)
        run(env, "revoke", created["id"])
        loop = asyncio.get_running_loop()
        revoked_at = loop.time()
        async with asyncio.timeout(10):
            while (status := await _status(http, created["url"])) != 403:
                assert status == 202
                await asyncio.sleep(0.1)
        assert loop.time() - revoked_at < 5


async def _read_until(stream: asyncio.StreamReader, marker: str) -> str:
    seen = ""
    async with asyncio.timeout(30):
        while marker not in seen:
            line = await stream.readline()
            if not line:
                break
            seen += line.decode()
    return seen


@pytest.fixture
async def dev_process(
    env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest, bus: AmqpBus
) -> AsyncIterator[tuple[str, str]]:
    """`triggers dev` in an empty directory, as a new user runs it; yields its banner.

    Depends on `bus` so the command queues start empty: commands left by other tests
    would otherwise reach the dev worker.
    """
    port = free_port()
    dev_env = {k: v for k, v in env.items() if not k.startswith("TRIGGERS_DATABASE")}
    dev_env.pop("TRIGGERS_LOCAL_STATE")
    dev_env.pop("TRIGGERS_PUBLIC_URL")
    dev_env.update(getattr(request, "param", {}))
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = await asyncio.create_subprocess_exec(
            *triggers_cli(),
            "dev",
            "--port",
            str(port),
            env=dev_env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert process.stdout is not None
    banner = await _read_until(process.stdout, "Ctrl-C")
    yield banner, str(tmp_path)
    # The terminal shows a line per result; the services' lines are in the file it names.
    results = await _read_until(process.stdout, "SUCCEEDED")
    assert "redeploy demo/shop" in results
    process.terminate()
    await asyncio.wait_for(process.wait(), 30)
    assert "Service logs: triggers-dev.log" in banner
    assert '"worker.started"' in (tmp_path / "triggers-dev.log").read_text()
    printed = (tmp_path / "stderr.txt").read_text()
    assert "error" not in printed.lower(), printed
    assert "Traceback" not in printed


async def _console_shows(banner: str, job_id: str) -> None:
    """The console URL and token the banner prints sign in, and the live view lists the job."""
    found = re.search(r"(http://\S+/ui) \(admin token for this run: (\S+)\)", banner)
    assert found is not None, banner
    console, token = found.groups()
    base = console.removesuffix("/ui")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        assert (await console_sign_in(http, base, token)).status == 303

        async def listed() -> bool | None:
            async with http.get(console) as page:
                assert page.status == 200
                return job_id[:8] in await page.text() or None

        await eventually(listed, what="the job in the console's live view", within=30)


async def _try_banner(banner: str, cwd: str, env: dict[str, str]) -> None:
    urls = re.findall(r"curl (?:-X POST )?'([^']+)'", banner)
    assert len(urls) == 3, banner
    job_ids = []
    async with aiohttp.ClientSession() as http:
        for method, url in zip(["GET", "POST", "POST"], urls, strict=True):
            async with http.request(method, url) as response:
                assert response.status == 202, await response.text()
                job_ids.append((await response.json())["job_id"])
    await _console_shows(banner, job_ids[0])
    # Redeploy raises revisions to 2; scale_out 3 then scale_in 1 takes web from 2 to 4.
    local_env = {k: v for k, v in env.items() if k != "TRIGGERS_LOCAL_STATE"}
    async with asyncio.timeout(20):
        while True:
            shown = subprocess.run(
                [*triggers_cli(), "local", "show", "--json"],
                env=local_env,
                cwd=cwd,
                capture_output=True,
                text=True,
                check=True,
            )
            web = json.loads(shown.stdout)["clusters"]["demo"]["apps"]["shop"]["services"]["web"]
            if web["replicas"] == 4 and web["revision"] == 2:
                break
            await asyncio.sleep(0.2)
    # And a caller can wait for the result (the result reaches this gateway by its key).
    async with aiohttp.ClientSession() as http, http.get(urls[0] + "&wait=20") as response:
        job = await response.json()
        assert response.status == 200, job
    assert job["status"] == "succeeded"
    assert job["result"]["after"]["web"]["revision"] == 3


@pytest.mark.slow
async def test_dev_prints_curl_lines_that_work(
    dev_process: tuple[str, str], env: dict[str, str]
) -> None:
    """`triggers dev` says it uses RabbitMQ, and its three curl lines change the demo cluster."""
    banner, cwd = dev_process
    assert "RabbitMQ" in banner
    await _try_banner(banner, cwd, env)


@pytest.mark.slow
@pytest.mark.parametrize(
    "dev_process",
    [{"TRIGGERS_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/"}],
    indirect=True,
)
async def test_dev_without_rabbitmq_uses_the_in_process_bus(
    dev_process: tuple[str, str], env: dict[str, str]
) -> None:
    """With no broker reachable, `triggers dev` says so and still works end to end."""
    banner, cwd = dev_process
    assert "in-process bus" in banner
    await _try_banner(banner, cwd, env)
