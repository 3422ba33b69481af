"""CLI rendering (triggers/render.py): result lines, history and trigger tables fitted to
the terminal, the less important parts dropped first, never a markup surprise."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from rich.text import Text

from shared.api import TriggerView
from shared.jobs import JobRecord
from shared.messages import ResultEvent, RolloutProgress, ServiceState, Source
from tests.support.messages import result_event
from triggers.render import (
    event_line,
    event_lines,
    event_text,
    job_detail,
    job_lines,
    job_table,
    trigger_lines,
    trigger_table,
)

pytestmark = pytest.mark.unit

JOB = "8ea126f6cccb" + "0" * 20
LONG_ERROR = (
    "the orchestrator refused the change: deployment web-frontend in namespace storefront "
    "exceeded its progress deadline after 600 seconds; 2 of 5 replicas unavailable"
)
CREATED = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


def _plain(lines: list[Text]) -> list[str]:
    return [line.plain for line in lines]


def _redeploy(**changes: object) -> ResultEvent:
    before = {"api": ServiceState(replicas=1, image="ghcr.io/acme/shop-api:1.4", revision=3)}
    after = {"api": ServiceState(replicas=1, image="ghcr.io/acme/shop-api:1.5", revision=4)}
    event = msgspec.structs.replace(
        result_event(JOB), action="redeploy", service="api", before=before, after=after
    )
    return msgspec.structs.replace(event, **changes)


def _job(
    status: str = "succeeded", result: ResultEvent | None = None, **fields: object
) -> JobRecord:
    values: dict[str, object] = {
        "job_id": JOB,
        "status": status,
        "trigger_id": "t" * 16,
        "action": "scale",
        "cluster": "demo",
        "app": "shop",
        "service": "web",
        "issued_at": CREATED,
        "result": result,
        **fields,
    }
    return msgspec.convert(values, JobRecord, from_attributes=True)


def test_a_scale_result_reads_as_one_line() -> None:
    """Status, action, target, replicas before → after, duration, source and job prefix."""
    line = event_text(result_event(JOB)).plain
    assert "✔ SUCCEEDED" in line
    assert "scale    demo/shop/web" in line
    assert "web 2 → 5 replicas" in line
    assert "40 ms" in line
    assert "curl/8.5 from 10.0.0.4" in line
    assert line.endswith(f"job {JOB[:12]}")


def test_a_redeploy_shows_the_revision_and_the_image_change() -> None:
    """A redeploy reads ``api rev 3 → 4 old-image → new-image``."""
    line = event_text(_redeploy()).plain
    assert "api rev 3 → 4 ghcr.io/acme/shop-api:1.4 → ghcr.io/acme/shop-api:1.5" in line


def test_a_narrow_terminal_drops_the_least_important_parts_first() -> None:
    """At 80 columns the source goes; status, target, change and job stay."""
    wide = event_lines(result_event(JOB), None)[0].plain
    narrow = event_lines(result_event(JOB), 80)[0].plain
    assert len(narrow) <= 80 < len(wide)
    assert "from 10.0.0.4" not in narrow
    for kept in ("SUCCEEDED", "demo/shop/web", "2 → 5", f"job {JOB[:12]}"):
        assert kept in narrow


def test_a_failure_message_wraps_below_its_line() -> None:
    """The error goes on indented lines under the result, each within the width."""
    event = msgspec.structs.replace(result_event(JOB), status="failed", error=LONG_ERROR)
    lines = _plain(event_lines(event, 80))
    assert "✘ FAILED" in lines[0]
    assert len(lines) > 2
    assert all(len(line) <= 80 for line in lines)
    assert all(line.startswith("    ") for line in lines[1:])
    assert " ".join(line.strip() for line in lines[1:]) == LONG_ERROR


def test_duplicates_and_retries_are_said() -> None:
    """A redelivered command's result says `duplicate`; a later attempt says its number."""
    line = event_text(msgspec.structs.replace(result_event(JOB), duplicate=True, attempt=3)).plain
    assert "duplicate" in line
    assert "attempt 3" in line


def test_a_detail_is_shown_unless_there_is_an_error() -> None:
    """A skipped result says why in brackets."""
    event = msgspec.structs.replace(result_event(JOB), status="skipped", detail="nothing to do")
    assert "(nothing to do)" in event_text(event).plain


def test_markup_in_a_user_agent_is_shown_as_text() -> None:
    """`[bold]` from a caller is printed as it came, never interpreted."""
    source = Source(remote="10.0.0.4", user_agent="[bold red]evil[/]")
    line = event_line(msgspec.structs.replace(result_event(JOB), source=source), colour=False)
    assert "[bold red]evil[/] from 10.0.0.4" in line


def test_the_coloured_line_has_ansi_codes_and_the_same_text() -> None:
    """`event_line` colours for a terminal; without colour it is the plain text."""
    event = result_event(JOB)
    coloured = event_line(event)
    assert "\x1b[" in coloured
    assert event_line(event, colour=False) == event_text(event).plain


def test_a_job_without_a_result_shows_its_state_and_progress() -> None:
    """A running redeploy shows RUNNING and how far its rollout got."""
    job = _job(
        "running",
        action="redeploy",
        service=None,
        progress={"web": RolloutProgress(updated=2, total=3)},
    )
    line = job_lines(job, 80)[0].plain
    assert "▶ RUNNING" in line
    assert "web 2/3 updated" in line


def test_history_fits_80_columns_and_wraps_errors() -> None:
    """`history` at 80 columns: header, one row a job, a failure's message below it."""
    failed = msgspec.structs.replace(result_event(JOB), status="failed", error=LONG_ERROR)
    jobs = [_job(result=result_event(JOB)), _job("failed", result=failed, error=LONG_ERROR)]
    lines = _plain(job_table(jobs, 80))
    assert lines[0].split()[:2] == ["TIME", "STATUS"]
    assert all(len(line) <= 80 for line in lines)
    assert sum(JOB[:8] in line for line in lines) == 2
    assert any(line.startswith("    the orchestrator") for line in lines)


def test_wide_history_keeps_every_column() -> None:
    """Without a width, every column and the 12-character job prefix are shown."""
    header, row = _plain(job_table([_job(result=result_event(JOB))], None))
    assert header.split() == [
        "TIME",
        "STATUS",
        "ACTION",
        "TARGET",
        "CHANGE",
        "TOOK",
        "SOURCE",
        "JOB",
    ]
    assert JOB[:12] in row


def test_job_detail_lists_its_fields() -> None:
    """`triggers job`: the line, then job, status, target, change and timestamps."""
    lines = _plain(job_detail(_job(result=result_event(JOB), duration_ms=40.0), 80))
    fields = {line.split(":", 1)[0] for line in lines[2:]}
    assert {"job", "status", "target", "change", "issued", "took"} <= fields
    assert any(line == f"job:       {JOB}" for line in lines)
    assert any("web 2 → 5 replicas" in line for line in lines if line.startswith("change"))


def _view(**changes: object) -> TriggerView:
    view = TriggerView(
        id="01JEXAMPLE00000000000000AB",
        cluster="demo",
        app="shop",
        action="scale",
        service="web",
        image_update=False,
        namespace=None,
        options={},
        trigger_url="ZGVtbw==",
        status="active",
        enabled=True,
        expires_at=None,
        min_replicas=1,
        max_replicas=10,
        cooldown=120,
        rate_limit=None,
        allowed_methods=["GET", "POST"],
        created_at=CREATED,
        updated_at=None,
        revoked_at=None,
        rotated_at=None,
        previous_secret_expires_at=None,
    )
    return msgspec.structs.replace(view, **changes)


def test_the_trigger_table_drops_policy_and_creation_time_when_narrow() -> None:
    """`list` at 60 columns keeps id, target, action and status."""
    wide = _plain(trigger_table([_view()], None))
    narrow = _plain(trigger_table([_view()], 60))
    assert "POLICY" in wide[0]
    assert "CREATED" in wide[0]
    assert narrow[0].split() == ["ID", "TARGET", "ACTION", "STATUS"]
    assert "demo/shop/web" in narrow[1]


def test_show_prints_fields_as_the_command_line_takes_them() -> None:
    """`show`: `methods: GET,POST`, `cooldown: 2m`, the step default spelled out."""
    lines = trigger_lines(_view()).splitlines()
    by_name = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines}
    assert by_name["methods"] == "GET,POST"
    assert by_name["cooldown"] == "2m"
    assert by_name["step"] == "1 (default)"
    assert by_name["created-at"] == "2026-12-07T03:00:00Z"
    assert "url" not in by_name
    assert "secret" not in by_name


def test_times_are_shown_in_local_time_on_the_line() -> None:
    """The line's time is the result's finish in the terminal's time zone, to the second."""
    event = result_event(JOB, ago=3600)
    assert event_text(event).plain.startswith(event.finished_at.astimezone().strftime("%H:%M:%S"))
