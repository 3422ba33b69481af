"""Human-readable rendering of triggers and result events for the terminal."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from msgspec import UNSET
from rich.console import Console
from rich.text import Text

from shared.api import TriggerView
from shared.audit import AuditEntry
from shared.describe import duration_text, origin_text, policy_summary, when_text
from shared.jobs import JobRecord, progress_text
from shared.messages import ResultEvent, ServiceState, Source

if TYPE_CHECKING:
    from shared.api import DeadMessage

__all__ = [
    "audit_table",
    "console",
    "dlq_table",
    "event_line",
    "event_lines",
    "event_text",
    "job_detail",
    "job_lines",
    "job_table",
    "print_lines",
    "trigger_lines",
    "trigger_table",
]

# Colour by status: green done, red failed, yellow nothing to do, cyan/blue in progress.
_STATUS_STYLE = {
    "succeeded": "bold green",
    "failed": "bold red",
    "skipped": "yellow",
    "running": "cyan",
    "accepted": "blue",
    "pending_approval": "magenta",
    "rejected": "bold red",
    "expired": "yellow",
}
_STATUS_MARK = {
    "succeeded": "✔",
    "failed": "✘",
    "skipped": "○",
    "running": "▶",
    "accepted": "…",
    "pending_approval": "⏸",
    "rejected": "⊘",
    "expired": "⌛",
}


@dataclass(frozen=True)
class _Column:
    """A table column: `rank` 0 is never dropped, higher ranks drop first when narrow;
    a `flexible` column is cut short (…) when dropping is not enough."""

    header: str
    rank: int = 0
    flexible: bool = False


# The narrowest a flexible column is cut to before the table just overflows.
_MIN_FLEXIBLE = 10
_GAP = 2


def _fit_widths(
    columns: Sequence[_Column], rows: Sequence[Sequence[Text]], width: int | None
) -> tuple[list[int], list[int]]:
    """Which columns to show and how wide: the least important drop until the rows fit."""
    natural = [
        max([len(c.header)] + [row[i].cell_len for row in rows]) for i, c in enumerate(columns)
    ]
    shown = list(range(len(columns)))

    def total(indexes: list[int], widths: list[int]) -> int:
        return sum(widths[i] for i in indexes) + _GAP * (len(indexes) - 1)

    if width is None:
        return shown, natural
    for index in sorted(shown, key=lambda i: -columns[i].rank):
        if total(shown, natural) <= width or columns[index].rank == 0:
            break
        shown.remove(index)
    widths = list(natural)
    excess = total(shown, widths) - width
    flexible = [i for i in shown if columns[i].flexible]
    # Cut the widest flexible column a cell at a time, so long ones share the cut.
    while excess > 0 and flexible:
        widest = max(flexible, key=lambda i: widths[i])
        if widths[widest] <= _MIN_FLEXIBLE:
            break
        widths[widest] -= 1
        excess -= 1
    return shown, widths


def _fit_table(
    columns: Sequence[_Column],
    rows: Sequence[Sequence[Text]],
    width: int | None,
    notes: Sequence[Text | None] = (),
) -> list[Text]:
    """Aligned lines that fit `width` (None: everything), header first.

    A row's note (a failure message) goes on its own indented lines below the row,
    wrapped to the width, rather than stretching the table.
    """
    shown, widths = _fit_widths(columns, rows, width)
    lines = []

    def line(cells: Sequence[Text]) -> Text:
        out = Text()
        for n, index in enumerate(shown):
            cell = cells[index].copy()
            last = n == len(shown) - 1
            if cell.cell_len > widths[index]:
                cell.truncate(widths[index], overflow="ellipsis")
            if not last:
                cell.pad_right(widths[index] - cell.cell_len + _GAP)
            out.append_text(cell)
        out.rstrip()
        return out

    lines.append(line([Text(c.header, style="bold") for c in columns]))
    for n, row in enumerate(rows):
        lines.append(line(row))
        note = notes[n] if n < len(notes) else None
        if note is not None and note.plain:
            lines.extend(_wrapped(note, width))
    return lines


def _wrapped(note: Text, width: int | None, indent: int = 4) -> list[Text]:
    """A note on its own lines, indented, wrapped to `width` (None: one line)."""
    room = None if width is None else max(width - indent, 20)
    pieces = textwrap.wrap(note.plain, room) if room is not None else [note.plain]
    style = note.style
    return [Text(" " * indent + piece, style=style) for piece in pieces]


def _plain(value: object) -> Text:
    """A cell from caller-supplied text: a Text, so Rich never reads markup in it."""
    return Text("-" if value is None or value == "" else str(value))


def trigger_table(views: list[TriggerView], width: int | None = None) -> list[Text]:
    """One trigger a row; when narrow, policy and creation time drop first."""
    columns = (
        _Column("ID"),
        _Column("TARGET", flexible=True),
        _Column("ACTION"),
        _Column("STATUS"),
        _Column("POLICY", rank=2, flexible=True),
        _Column("CREATED", rank=3),
    )
    rows = [
        [
            _plain(v.id),
            _plain(_target(v.cluster, v.app, v.service)),
            _plain(v.action + (" (image)" if v.image_update else "")),
            _plain(v.status),
            _plain(policy_summary(v)),
            _plain(when_text(v.created_at)),
        ]
        for v in views
    ]
    return _fit_table(columns, rows, width)


# `show`: each field under the name of the option that sets it, valued as the option takes it.
_FLAG_NAMES = {"allowed_methods": "methods", "image_update": "image-update"}


def _cli_value(key: str, value: object) -> str:
    text: str
    if value is None:
        text = "-"
    elif key == "cooldown" and isinstance(value, int | float):
        text = duration_text(value)
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, datetime):
        text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif isinstance(value, list):  # allowed methods: GET,POST as --methods takes them
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    return text


def _option_lines(view: TriggerView) -> list[tuple[str, str]]:
    """The registry and alert options, one a line under their flag's name, defaults spelled
    out (an alert cooldown is not the policy's cooldown)."""
    options = view.options
    lines: list[tuple[str, str]] = []
    if view.image_update or view.action == "redeploy":
        image = options.get("image") or ("any pushed repository" if view.image_update else None)
        lines.append(("image", _cli_value("image", image)))
        lines.append(("tags", _cli_value("tags", options.get("tags"))))
        if options.get("semver"):
            lines.append(("semver", str(options["semver"])))
    if view.action == "scale":
        lines.append(
            ("step", f"{options.get('step') or 1}" + ("" if options.get("step") else " (default)"))
        )
        lines.append(("scale-in-on-resolve", "yes" if options.get("scale_in_on_resolve") else "no"))
    cooldown = options.get("alert_cooldown")
    lines.append(
        (
            "alert-cooldown",
            duration_text(cooldown)
            if cooldown is not None
            else "TRIGGERS_ALERT_COOLDOWN (default)",
        )
    )
    lines.append(("signature", _cli_value("signature", options.get("signature"))))
    lines.append(("header-secret-only", "yes" if options.get("header_secret_only") else "no"))
    return lines


def trigger_lines(view: TriggerView) -> str:
    """One ``field: value`` line per field, for `show` and the other single-trigger commands.

    Names and values are the command line's: ``cooldown: 2m``, ``methods: GET,POST``,
    ``alert-cooldown: 5m``, so a value can be copied into `triggers update`.
    """
    lines: list[str] = []
    for key in view.__struct_fields__:
        value = getattr(view, key)
        if key == "options":
            lines.extend(f"{name + ':':27} {shown}" for name, shown in _option_lines(view))
            continue
        if value is UNSET:
            continue
        name = _FLAG_NAMES.get(key, key.replace("_", "-"))
        lines.append(f"{name + ':':27} {_cli_value(key, value)}")
    return "\n".join(lines)


def audit_table(entries: list[AuditEntry], width: int | None = None) -> list[Text]:
    """One call a row, newest first; when narrow, the user agent, remote and method drop first."""
    columns = (
        _Column("TIME"),
        _Column("OUTCOME"),
        _Column("STATUS", rank=1),
        _Column("TRIGGER"),
        _Column("REASON", flexible=True),
        # What a wait=N call waited for (succeeded, failed, skipped, timed_out).
        _Column("WAITED", rank=2),
        _Column("JOB", rank=2),
        _Column("METHOD", rank=4),
        _Column("REMOTE", rank=3),
        _Column("USER AGENT", rank=5, flexible=True),
    )
    rows = [
        [
            _plain(e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")),
            _plain(e.outcome),
            _plain(e.status),
            _plain(e.trigger_id),
            _plain(e.reason),
            _plain(e.wait_outcome),
            _plain(e.job_id[:12] if e.job_id else None),
            _plain(e.method),
            _plain(e.remote),
            _plain(e.user_agent),
        ]
        for e in entries
    ]
    return _fit_table(columns, rows, width)


def dlq_table(dead: Sequence[DeadMessage], width: int | None = None) -> list[Text]:
    """One dead message a row, why it died on its own line below."""
    columns = (
        _Column("ID"),
        _Column("ACTION", rank=2),
        _Column("TARGET", flexible=True),
        _Column("DIED"),
        _Column("ATTEMPTS", rank=3),
        _Column("QUEUE", rank=4, flexible=True),
    )
    rows = [
        [
            _plain(m.id),
            _plain(m.action),
            _plain("/".join(p for p in (m.cluster, m.app, m.service) if p) or "(undecodable)"),
            _plain(m.died_at),
            _plain(m.attempts),
            _plain(m.queue),
        ]
        for m in dead
    ]
    notes = [Text(m.reason, style="red") for m in dead]
    return _fit_table(columns, rows, width, notes)


def console() -> Console:
    """Stdout for people: colours on a terminal; into a pipe, wide lines (240 columns)
    unless `COLUMNS` asks for a width."""
    out = Console(highlight=False, soft_wrap=True)
    if not out.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        out.width = 240
    return out


def print_lines(lines: Sequence[Text]) -> None:
    """Print fitted lines (no further wrapping: they were fitted to the width)."""
    out = console()
    for line in lines:
        out.print(line)


def _change(before: dict[str, ServiceState], after: dict[str, ServiceState], action: str) -> Text:
    """``web 2 → 5`` for a scale, ``api rev 3 → 4 nginx:1.27 → nginx:1.28`` for a redeploy."""
    text = Text()
    for name in sorted(after or before):
        old, new = before.get(name), after.get(name)
        if old is None or new is None:
            continue
        if text:
            text.append(", ")
        text.append(f"{name} ", style="bold")
        if action == "scale":
            text.append(str(old.replicas), style="dim")
            text.append(" → ")
            text.append(str(new.replicas), style="bold")
            text.append(" replicas")
        else:
            text.append(f"rev {old.revision}", style="dim")
            text.append(" → ")
            text.append(f"{new.revision}", style="bold")
            if old.image != new.image:
                text.append(f" {old.image}", style="dim")
                text.append(" → ")
                text.append(new.image, style="bold magenta")
    return text


def _source(source: Source) -> str:
    parts = [p for p in (source.user_agent, source.remote and f"from {source.remote}") if p]
    return " ".join(parts)


def _target(cluster: str, app: str, service: str | None) -> str:
    return f"{cluster}/{app}" + (f"/{service}" if service else "")


def _status(status: str) -> Text:
    mark = _STATUS_MARK.get(status, " ")
    return Text(f"{mark} {status.upper():9}", style=_STATUS_STYLE.get(status, ""))


# The action's rank in a line: dropped early when narrow; its gap is one space.
_ACTION_RANK = 2


def _event_parts(event: ResultEvent) -> list[tuple[int, Text]]:
    """The pieces of a result line, each with its rank (0 kept, higher dropped first)."""
    parts: list[tuple[int, Text]] = [
        (0, Text(event.finished_at.astimezone().strftime("%H:%M:%S"), style="dim")),
        (0, _status(event.status)),
        (_ACTION_RANK, Text(f"{event.action:8}")),
        (0, Text(_target(event.cluster, event.app, event.service), style="bold")),
    ]
    change = _change(event.before, event.after, event.action)
    if change:
        parts.append((0, change))
    if event.detail and not event.error:
        parts.append((1, Text(f"({event.detail})", style="italic")))
    if event.duplicate:
        parts.append((1, Text("duplicate", style="yellow")))
    if event.duration_ms is not None:
        parts.append((3, Text(f"{event.duration_ms:.0f} ms", style="cyan")))
    if event.attempt > 1:
        parts.append((1, Text(f"attempt {event.attempt}", style="yellow")))
    origin = origin_text(event.source)
    if origin:
        parts.append((4, Text(origin, style="magenta")))
    source = _source(event.source)
    if source:
        parts.append((5, Text(source, style="dim")))
    if event.correlation_id and event.correlation_id != event.job_id:
        parts.append((6, Text(f"req {event.correlation_id}", style="dim")))
    parts.append((0, Text(f"job {event.job_id[:12]}", style="dim")))
    return parts


def _joined(parts: Sequence[tuple[int, Text]], width: int | None) -> Text:
    """The parts two spaces apart; the highest ranks dropped until the line fits `width`.

    The action is padded to 8 and followed by one space, so targets line up in a column.
    """
    kept = list(parts)

    def render(chosen: Sequence[tuple[int, Text]]) -> Text:
        line = Text()
        for n, (_, text) in enumerate(chosen):
            if n:
                line.append(" " if chosen[n - 1][0] == _ACTION_RANK else "  ")
            line.append_text(text)
        return line

    if width is not None:
        for rank in sorted({r for r, _ in parts if r > 0}, reverse=True):
            if render(kept).cell_len <= width:
                break
            kept = [(r, t) for r, t in kept if r != rank]
    line = render(kept)
    if width is not None and line.cell_len > width:
        line.truncate(width, overflow="ellipsis")
    return line


def event_text(event: ResultEvent) -> Text:
    """One line per result: time, status, action, target, before → after, why, duration, source."""
    line = _joined(_event_parts(event), None)
    if event.error:
        line.append(f"  {event.error}", style="red")
    return line


def event_lines(event: ResultEvent, width: int | None) -> list[Text]:
    """A result fitted to `width` (None: everything): the less important parts drop
    first, and a failure message wraps on its own lines below."""
    lines = [_joined(_event_parts(event), width)]
    if event.error:
        lines.extend(_wrapped(Text(event.error, style="red"), width))
    return lines


def job_lines(job: JobRecord, width: int | None) -> list[Text]:
    """A job from history: its result lines, or its state while it has none."""
    if job.result is not None:
        return event_lines(job.result, width)
    moment = job.started_at or job.accepted_at or job.issued_at
    parts: list[tuple[int, Text]] = [
        (0, Text(moment.astimezone().strftime("%H:%M:%S"), style="dim")),
        (0, _status(job.status)),
        (_ACTION_RANK, Text(f"{job.action:8}")),
        (0, Text(_target(job.cluster, job.app, job.service), style="bold")),
    ]
    if job.progress:
        parts.append((0, _progress(job)))
    source = _source(job.source)
    if source:
        parts.append((5, Text(source, style="dim")))
    parts.append((0, Text(f"job {job.job_id[:12]}", style="dim")))
    return [_joined(parts, width)]


def _progress(job: JobRecord) -> Text:
    """``2/3 updated``: how far the job's rollout got, as its last `running` notice said."""
    return Text(progress_text(job.progress, job.service), style="cyan")


def event_line(event: ResultEvent, *, colour: bool = True) -> str:
    """`event_text` as a string, with ANSI colours or plain."""
    text = event_text(event)
    if not colour:
        return text.plain
    console = Console(force_terminal=True, color_system="standard", width=1_000, soft_wrap=True)
    with console.capture() as captured:
        console.print(text, end="")
    return captured.get()


def job_detail(job: JobRecord, width: int | None = None) -> list[Text]:
    """One job, for `triggers job`: its line, then a field a line."""
    lines = job_lines(job, width)
    result = job.result
    change = _change(result.before, result.after, job.action) if result else Text()

    def moment(value: datetime | None) -> str:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z" if value else "-"

    fields: list[tuple[str, Text]] = [
        ("job", _plain(job.job_id)),
        ("status", _status(job.status)),
        ("trigger", _plain(job.trigger_id)),
        ("action", _plain(job.action)),
        ("target", _plain(_target(job.cluster, job.app, job.service))),
        ("change", change if change else _plain(None)),
    ]
    if job.progress:
        read = f" (as of {moment(job.progress_at)})" if job.progress_at else ""
        fields.append(("progress", _progress(job).append(read, style="dim")))
    fields += [
        ("issued", _plain(moment(job.issued_at))),
        ("accepted", _plain(moment(job.accepted_at))),
        ("started", _plain(moment(job.started_at))),
        ("finished", _plain(moment(job.finished_at))),
        ("took", _plain(f"{job.duration_ms:.0f} ms" if job.duration_ms is not None else None)),
        ("attempt", _plain(job.attempt)),
        ("source", _plain(_source(job.source))),
        ("request", _plain(job.correlation_id)),
    ]
    lines.append(Text())
    for name, value in fields:
        line = Text(f"{name + ':':10} ")
        line.append_text(value)
        if width is not None and line.cell_len > width:
            line.truncate(width, overflow="ellipsis")
        lines.append(line)
    if job.error:
        lines.append(Text("error:"))
        lines.extend(_wrapped(Text(job.error, style="red"), width))
    return lines


def job_table(jobs: list[JobRecord], width: int | None = None) -> list[Text]:
    """History, newest first; when narrow, source, duration and action drop first, and a
    failure message wraps on its own lines below its job."""
    columns = (
        _Column("TIME"),
        _Column("STATUS"),
        _Column("ACTION", rank=3),
        _Column("TARGET", flexible=True),
        _Column("CHANGE", flexible=True),
        _Column("TOOK", rank=2),
        _Column("SOURCE", rank=4, flexible=True),
        _Column("JOB"),
    )
    rows = []
    # Narrow: the year and all but 8 characters of the job id (a prefix is enough anywhere).
    moment, id_length = ("%Y-%m-%d %H:%M:%S", 12) if width is None else ("%m-%d %H:%M:%S", 8)
    for job in jobs:
        result = job.result
        change = _change(result.before, result.after, job.action) if result else Text()
        if result is None and job.progress:
            change = _progress(job)
        rows.append(
            [
                Text(job.issued_at.astimezone().strftime(moment)),
                _status(job.status),
                Text(job.action),
                Text(_target(job.cluster, job.app, job.service)),
                change,
                Text(f"{job.duration_ms:.0f} ms" if job.duration_ms is not None else ""),
                Text(_source(job.source)),
                Text(job.job_id[:id_length]),
            ]
        )
    notes = [Text(job.error, style="red") if job.error else None for job in jobs]
    return _fit_table(columns, rows, width, notes)
