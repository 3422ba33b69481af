"""The CLI in an 80-column terminal, job ids by prefix, --server for history, job and dlq,
durations with units, --version, help naming the environment, one JSON convention."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import click
import msgspec
import pytest
import structlog
from click.testing import CliRunner, Result

from shared.api import DeadMessage
from shared.audit import AuditEntry
from shared.jobs import JobRecord, JobStore
from shared.logging import configure_logging
from shared.messages import RolloutProgress
from shared.settings import Settings
from shared.store import TriggerStore
from tests.support.cli import run_cli
from tests.support.gateways import ADMIN_TOKEN, Gateway
from tests.support.messages import result_event
from triggers import cli as cli_module
from triggers.cli import main
from triggers.render import dlq_table

LONG_ERROR = (
    "the orchestrator refused the change: deployment web-frontend in namespace storefront "
    "exceeded its progress deadline after 600 seconds; 2 of 5 replicas unavailable"
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This module's gateways serve the admin API."""
    return settings.with_(admin_token=ADMIN_TOKEN)


@pytest.fixture
def cli(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`triggers ARGS` through click's runner, in a terminal of `columns` columns; in a
    thread, so a gateway on this test's loop can answer it.

    The command configures logging as it does, but without caching loggers, and the
    configuration is restored afterwards: a logger cached in this process would keep the
    command's processors, and later tests' `capture_logs` would see nothing.
    """
    configure = configure_logging

    def uncached(*args: Any, **kwargs: Any) -> None:
        configure(*args, **kwargs)
        structlog.configure(cache_logger_on_first_use=False)

    monkeypatch.setattr(cli_module, "configure_logging", uncached)
    saved = structlog.get_config()

    async def invoke(*args: str, columns: int = 80, code: int = 0) -> Result:
        runner = CliRunner()
        result = await asyncio.to_thread(
            runner.invoke, main, list(args), env={**env, "COLUMNS": str(columns)}
        )
        assert result.exit_code == code, (result.output, result.exception)
        return result

    yield invoke
    structlog.configure(**saved)


def widest(text: str) -> int:
    """The widest line, in terminal cells."""
    from rich.cells import cell_len  # noqa: PLC0415

    return max(cell_len(line) for line in text.splitlines())


async def _history(jobs: JobStore) -> tuple[str, str]:
    """A succeeded and a failed job with a long target and a long error; their ids."""
    ok = result_event("abcd1" + "0" * 27, app="storefront", ago=120)
    failed = msgspec.structs.replace(
        result_event("abcd2" + "0" * 27, app="storefront", status="failed", ago=60),
        error=LONG_ERROR,
    )
    for event in (ok, failed):
        await jobs.record(JobRecord.from_event(event))
    return ok.job_id, failed.job_id


@pytest.mark.unit
async def test_history_fits_80_columns_and_wraps_the_error(jobs: JobStore, cli: Any) -> None:
    """history at 80 columns keeps time, status, target, change and job id; the error
    wraps on its own lines; --wide shows every column."""
    ok, failed = await _history(jobs)
    out = (await cli("history")).output
    assert widest(out) <= 80, out
    header = out.splitlines()[0].split()
    assert header == ["TIME", "STATUS", "TARGET", "CHANGE", "JOB"]
    row = next(line for line in out.splitlines() if failed[:8] in line)
    assert "FAILED" in row
    assert "demo/storefront/web" in row
    assert "2 → 5" in row
    assert "progress deadline" not in row
    assert "progress deadline" in out
    assert out.count(ok[:8]) == 1

    wide = (await cli("history", "--wide")).output
    assert widest(wide) > 80
    assert {"ACTION", "TOOK", "SOURCE"} <= set(wide.splitlines()[0].split())
    assert "curl/8.5" in wide


async def test_tail_since_fits_80_columns(jobs: JobStore, env: dict[str, str]) -> None:
    """tail's lines fit 80 columns keeping status, target, change and job id."""
    ok, failed = await _history(jobs)
    code, out, err = await run_cli(
        {**env, "COLUMNS": "80"}, "tail", "--since", "1h", "--count", "2"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert widest(out) <= 80, out
    assert any(ok[:12] in line and "SUCCEEDED" in line and "2 → 5" in line for line in lines)
    assert any(failed[:12] in line and "FAILED" in line for line in lines)
    assert "progress deadline" in out


@pytest.mark.unit
async def test_list_and_audit_fit_80_columns(store: TriggerStore, cli: Any) -> None:
    """list keeps id, target, action, status; audit keeps time, outcome, trigger, reason."""
    await cli(
        "create",
        "--cluster=production-europe-west",
        "--app=storefront-checkout",
        "--action=scale",
        "--service=web-frontend",
        "--cooldown=2m",
        "--expires-in=30d",
        "--max-replicas=10",
    )
    listed = (await cli("list")).output
    assert widest(listed) <= 80, listed
    assert listed.split()[:4] == ["ID", "TARGET", "ACTION", "STATUS"]
    assert "POLICY" in (await cli("list", "--wide")).output

    trigger_id = json.loads((await cli("list", "--json")).stdout)[0]["id"]
    await store.record_audit(
        [
            AuditEntry(
                at=datetime.now(UTC),
                outcome="rejected",
                status=403,
                trigger_id=trigger_id,
                reason="wrong_secret",
                method="POST",
                remote="127.0.0.1",
                user_agent="Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 [bold]x[/bold]",
            )
        ]
    )
    audited = (await cli("audit")).output
    assert widest(audited) <= 80, audited
    assert trigger_id in audited
    assert "wrong_secret" in audited
    assert "[bold]x[/bold]" in (await cli("audit", "--wide")).output


@pytest.mark.unit
async def test_audit_table_shows_what_a_waiting_call_waited_for(
    store: TriggerStore, cli: Any
) -> None:
    """An accepted wait=N call's outcome (here: failed) has its own WAITED column."""
    await store.record_audit(
        [
            AuditEntry(
                at=datetime.now(UTC),
                outcome="accepted",
                status=422,
                trigger_id="t" * 26,
                job_id="j" * 32,
                wait_outcome="failed",
            )
        ]
    )
    header, row = (await cli("audit", "--wide")).output.splitlines()[:2]
    assert "WAITED" in header.split()
    assert row.split()[header.split().index("WAITED") + 1] == "failed"  # TIME is two words


@pytest.mark.unit
def test_dlq_table_fits_80_columns() -> None:
    """dlq list at 80 columns: id, target and time of death, the reason on its own line."""
    dead = DeadMessage(
        id="7" * 32,
        reason=LONG_ERROR,
        queue="triggers.commands.scale",
        died_at="2026-12-07T01:02:03Z",
        attempts=5,
        action="scale",
        cluster="production-europe-west",
        app="storefront-checkout",
        service="web-frontend",
        replayable=True,
        size=420,
    )
    lines = [line.plain for line in dlq_table([dead], 80)]
    assert max(len(line) for line in lines) <= 80, lines
    assert "7" * 32 in lines[1]
    assert "2026-12-07T01:02:03Z" in lines[1]
    assert "progress deadline" not in lines[1]
    assert any("progress deadline" in line for line in lines[2:])


@pytest.mark.unit
async def test_job_by_prefix_locally(jobs: JobStore, cli: Any) -> None:
    """`triggers job` takes a unique prefix; an ambiguous or unknown one is one line."""
    ok, failed = await _history(jobs)
    shown = (await cli("job", failed[:6])).output
    assert failed in shown
    assert "progress deadline" in shown
    assert json.loads((await cli("job", ok[:5], "--json")).stdout)["job_id"] == ok
    ambiguous = await cli("job", "a", code=1)
    assert "several job ids" in ambiguous.output
    unknown = await cli("job", "ffff", code=1)
    assert "no job ffff" in unknown.output


async def test_history_job_and_dlq_through_a_gateway(
    jobs: JobStore, gateway: Gateway, cli: Any
) -> None:
    """history, job (by prefix) and dlq list work with --server, through the admin API."""
    ok, failed = await _history(jobs)
    server = ("--server", gateway.url, "--token", ADMIN_TOKEN)
    listed = json.loads((await cli("history", *server, "--json")).stdout)
    assert [job["job_id"] for job in listed] == [failed, ok]
    assert failed[:8] in (await cli("history", *server)).output
    assert json.loads((await cli("job", failed[:5], *server, "--json")).stdout)["job_id"] == failed
    assert json.loads((await cli("dlq", "list", *server, "--json")).stdout) == []
    assert "empty" in (await cli("dlq", "list", *server)).output
    refused = await cli("job", failed[:5], "--server", gateway.url, "--token", "wrong", code=1)
    assert "TRIGGERS_ADMIN_TOKEN" in refused.output


async def test_a_job_prefix_needs_the_admin_token_over_http(
    jobs: JobStore, gateway: Gateway
) -> None:
    """GET /v1/jobs/{prefix} answers the job only with the admin token; else 400."""
    _, failed = await _history(jobs)
    async with gateway.http.get(f"{gateway.url}/v1/jobs/{failed[:6]}") as response:
        assert response.status == 400
    status, body = await gateway.admin("GET", f"/v1/jobs/{failed[:6]}")
    assert status == 200
    assert body["job_id"] == failed
    status, body = await gateway.admin("GET", "/v1/jobs/abcd")
    assert (status, body["error"]) == (409, "ambiguous_job_id")


@pytest.mark.unit
async def test_durations_take_units_and_show_prints_them_back(cli: Any) -> None:
    """--cooldown 2m, --expires-in 30d, --grace 5m; show prints cooldown: 2m, methods: GET,POST."""
    created = json.loads(
        (
            await cli(
                "create",
                "--cluster=demo",
                "--app=shop",
                "--action=redeploy",
                "--cooldown=2m",
                "--expires-in=30d",
                "--json",
            )
        ).output
    )
    assert created["cooldown"] == 120
    expires = datetime.fromisoformat(created["expires_at"]) - datetime.now(UTC)
    assert 29.9 < expires.total_seconds() / 86400 <= 30
    shown = (await cli("show", created["id"])).output
    assert "cooldown:" in shown
    assert "cooldown:                   2m" in shown
    assert "methods:                    GET,POST" in shown
    assert "5m more" in (await cli("rotate", created["id"], "--grace", "5m")).output
    await cli("update", created["id"], "--cooldown", "1h")
    assert json.loads((await cli("show", created["id"], "--json")).stdout)["cooldown"] == 3600
    refused = await cli("update", created["id"], "--cooldown", "5x", code=2)
    assert "expected a duration" in refused.output


@pytest.mark.unit
async def test_version_and_every_option_explained(cli: Any) -> None:
    """--version prints one; every option has help, and those read from the environment name it."""
    assert (await cli("--version")).output.startswith("triggers, version ")

    def options(command: click.Command, path: tuple[str, ...]) -> Iterator[Any]:
        for param in command.params:
            if isinstance(param, click.Option):
                yield path, param
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from options(sub, (*path, name))

    for path, option in options(main, ()):
        assert option.help, (path, option.opts)
        if option.envvar:
            assert option.show_envvar, (path, option.opts)
    assert "TRIGGERS_ADMIN_TOKEN" in (await cli("list", "--help", columns=200)).output
    assert "TRIGGERS_DATABASE" in (await cli("--help", columns=200)).output


async def test_lists_are_json_arrays_and_streams_are_lines(
    jobs: JobStore, cli: Any, gateway: Gateway, env: dict[str, str]
) -> None:
    """list, history, audit and dlq list print one array; tail prints one object a line."""
    await _history(jobs)
    for args in (["list"], ["history"], ["audit"]):
        assert isinstance(json.loads((await cli(*args, "--json")).stdout), list), args
    server = ("--server", gateway.url, "--token", ADMIN_TOKEN)
    assert isinstance(json.loads((await cli("dlq", "list", *server, "--json")).stdout), list)
    code, out, err = await run_cli(env, "tail", "--since", "1h", "--count", "2", "--json")
    assert code == 0, err
    streamed = out.splitlines()
    assert len(streamed) == 2
    assert all(isinstance(json.loads(line), dict) for line in streamed)


async def test_a_rollout_in_progress_shows_in_job_history_tail_and_the_api(
    jobs: JobStore, gateway: Gateway, cli: Any, env: dict[str, str]
) -> None:
    """Redeploys still rolling out read `RUNNING ... 2/3 updated` (a service's) and `api 1/1, web 2/3 updated` (an app's) in job, history (locally and with --server) and tail --since; /v1/jobs/{id} and --json carry the counts."""
    started = datetime.now(UTC)
    one = JobRecord(
        job_id="abce1" + "0" * 27, status="running", trigger_id="t" * 16, action="redeploy",
        cluster="demo", app="shop", service="web", issued_at=started, started_at=started,
        progress={"web": RolloutProgress(updated=2, total=3)}, progress_at=started,
    )  # fmt: skip
    app = msgspec.structs.replace(
        one,
        job_id="abce2" + "0" * 27,
        service=None,
        progress={
            "web": RolloutProgress(updated=2, total=3),
            "api": RolloutProgress(updated=1, total=1),
        },
    )
    for job in (one, app):
        await jobs.record(job)

    shown = (await cli("job", "abce1")).output.splitlines()
    assert "RUNNING" in shown[0]
    assert "2/3 updated" in shown[0]
    assert any(line.startswith("progress:") and "2/3 updated (as of " in line for line in shown)
    assert "api 1/1, web 2/3 updated" in (await cli("job", "abce2")).output
    server = ("--server", gateway.url, "--token", ADMIN_TOKEN)
    for history in ((await cli("history")).output, (await cli("history", *server)).output):
        row = next(line for line in history.splitlines() if one.job_id[:8] in line)
        assert "RUNNING" in row
        assert "2/3 updated" in row
    counts = {"web": {"updated": 2, "total": 3}}
    assert json.loads((await cli("job", "abce1", *server, "--json")).stdout)["progress"] == counts
    async with gateway.http.get(f"{gateway.url}/v1/jobs/{one.job_id}") as response:
        assert response.status == 200
        assert (await response.json())["progress"] == counts

    code, out, err = await run_cli(env, "tail", "--since", "1h", "--count", "2")
    assert code == 0, err
    assert any(one.job_id[:12] in line and "2/3 updated" in line for line in out.splitlines())
    assert any(app.job_id[:12] in line and "web 2/3 updated" in line for line in out.splitlines())
