"""Human-readable rendering of triggers and result events for the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shared.api import TriggerView
from shared.audit import AuditEntry
from shared.jobs import JobRecord
from shared.messages import ResultEvent, ServiceState, Source

__all__ = [
    "audit_table",
    "console",
    "curl_lines",
    "event_line",
    "event_text",
    "job_table",
    "job_text",
    "origin_text",
    "policy_summary",
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


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    every = [header, *rows]
    widths = [max(len(r[i]) for r in every) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in every
    )


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else "-"


def policy_summary(view: TriggerView) -> str:
    """The trigger's limits in a few words, ``-`` when it has none."""
    parts = []
    if view.min_replicas is not None or view.max_replicas is not None:
        low = view.min_replicas if view.min_replicas is not None else 0
        high = view.max_replicas if view.max_replicas is not None else "∞"
        parts.append(f"replicas {low}..{high}")
    if view.cooldown:
        parts.append(f"cooldown {view.cooldown}s")
    if view.rate_limit:
        parts.append(f"{view.rate_limit}/min")
    if view.allowed_methods != ["GET", "POST"]:
        parts.append(",".join(view.allowed_methods) + " only")
    if view.expires_at:
        parts.append(f"expires {_when(view.expires_at)}")
    return ", ".join(parts) or "-"


def trigger_table(views: list[TriggerView]) -> str:
    """Aligned columns, one trigger a row."""
    header = ("ID", "CLUSTER", "APP", "ACTION", "SERVICE", "STATUS", "POLICY", "CREATED")
    rows = [
        (
            v.id,
            v.cluster,
            v.app,
            v.action + (" (image)" if v.image_update else ""),
            v.service or "-",
            v.status,
            policy_summary(v),
            _when(v.created_at),
        )
        for v in views
    ]
    return _table(header, rows)


def _option_lines(view: TriggerView) -> dict[str, object]:
    """The registry and alert options, each on a line of its own, defaults spelled out."""
    options = view.options
    lines: dict[str, object] = {}
    if view.image_update or view.action == "redeploy":
        lines["image"] = options.get("image") or (
            "any pushed repository" if view.image_update else None
        )
        lines["tags"] = options.get("tags") or options.get("semver")
    if view.action == "scale":
        lines["alert step"] = options.get("step") or "1 (default)"
        lines["scale in on resolve"] = "yes" if options.get("scale_in_on_resolve") else "no"
    cooldown = options.get("alert_cooldown")
    lines["alert cooldown"] = (
        f"{cooldown:g} s" if cooldown is not None else "TRIGGERS_ALERT_COOLDOWN (default)"
    )
    lines["signature"] = options.get("signature")
    lines["header secret only"] = "yes" if options.get("header_secret_only") else "no"
    return lines


def trigger_lines(view: TriggerView) -> str:
    """One ``field: value`` line per field, for `show` and the other single-trigger commands;
    the options one per line (an alert cooldown is not the policy's cooldown)."""
    rows: dict[str, object] = {}
    for key, value in msgspec.to_builtins(view).items():
        if key == "options":
            rows.update(_option_lines(view))
        else:
            rows[key] = value
    return "\n".join(
        f"{key + ':':27} {', '.join(value) if isinstance(value, list) else value if value is not None else '-'}"
        for key, value in rows.items()
    )


def curl_lines(view: TriggerView) -> list[str]:
    """The ready curl commands of a trigger just created or rotated (its URL is in the view)."""
    if not isinstance(view.url, str):
        return []
    curl = f"curl -X POST '{view.url}"
    if view.options.get("header_secret_only"):
        # This trigger refuses the secret in the URL: show it in a header instead.
        bare, _, _ = view.url.partition("&secret=")
        curl = f"curl -X POST -H 'X-Trigger-Secret: {view.secret}' '{bare}"
    if view.action == "scale":
        return [f"{curl}&type=scale_out&step=1'", f"{curl}&type=scale_in&step=1'"]
    return [f"{curl}'"]


def audit_table(entries: list[AuditEntry]) -> str:
    """Aligned columns, one call a row, newest first."""
    header = ("TIME", "OUTCOME", "STATUS", "TRIGGER", "REASON", "METHOD", "REMOTE", "USER AGENT")
    rows = [
        (
            e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            e.outcome,
            str(e.status),
            e.trigger_id or "-",
            e.reason or "-",
            e.method or "-",
            e.remote or "-",
            (e.user_agent or "-")[:40],
        )
        for e in entries
    ]
    return _table(header, rows)


def console() -> Console:
    """Stdout for people: colours on a terminal; wide lines, not 80 columns, into a pipe."""
    out = Console(highlight=False, soft_wrap=True)
    if not out.is_terminal:
        out.width = 240
    return out


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


def origin_text(source: Source) -> str:
    """``via dockerhub acme/api:1.2`` or ``via alertmanager HighLoad firing``."""
    origin = source.origin
    if origin is None:
        return ""
    what = origin.alert or origin.repository or ""
    if origin.alert_status:
        what += f" {origin.alert_status}"
    elif origin.tag:
        what += f":{origin.tag}"
    return f"via {origin.source} {what}".rstrip()


def _target(cluster: str, app: str, service: str | None) -> str:
    return f"{cluster}/{app}" + (f"/{service}" if service else "")


def _status(status: str) -> Text:
    mark = _STATUS_MARK.get(status, " ")
    return Text(f"{mark} {status.upper():9}", style=_STATUS_STYLE.get(status, ""))


def event_text(event: ResultEvent) -> Text:
    """One line per result: time, status, action, target, before → after, why, duration, source."""
    line = Text()
    line.append(event.finished_at.astimezone().strftime("%H:%M:%S"), style="dim")
    line.append("  ")
    line.append_text(_status(event.status))
    line.append(f"  {event.action:8} ")
    line.append(_target(event.cluster, event.app, event.service), style="bold")
    change = _change(event.before, event.after, event.action)
    if change:
        line.append("  ")
        line.append_text(change)
    if event.error:
        line.append(f"  {event.error}", style="red")
    elif event.detail:
        line.append(f"  ({event.detail})", style="italic")
    if event.duplicate:
        line.append("  duplicate", style="yellow")
    if event.duration_ms is not None:
        line.append(f"  {event.duration_ms:.0f} ms", style="cyan")
    if event.attempt > 1:
        line.append(f"  attempt {event.attempt}", style="yellow")
    origin = origin_text(event.source)
    if origin:
        line.append(f"  {origin}", style="magenta")
    source = _source(event.source)
    if source:
        line.append(f"  {source}", style="dim")
    if event.correlation_id and event.correlation_id != event.job_id:
        line.append(f"  req {event.correlation_id}", style="dim")
    line.append(f"  job {event.job_id[:12]}", style="dim")
    return line


def job_text(job: JobRecord) -> Text:
    """A job from history: its result line, or its state while it has none."""
    if job.result is not None:
        return event_text(job.result)
    moment = job.started_at or job.accepted_at or job.issued_at
    line = Text()
    line.append(moment.astimezone().strftime("%H:%M:%S"), style="dim")
    line.append("  ")
    line.append_text(_status(job.status))
    line.append(f"  {job.action:8} ")
    line.append(_target(job.cluster, job.app, job.service), style="bold")
    source = _source(job.source)
    if source:
        line.append(f"  {source}", style="dim")
    line.append(f"  job {job.job_id[:12]}", style="dim")
    return line


def event_line(event: ResultEvent, *, colour: bool = True) -> str:
    """`event_text` as a string, with ANSI colours or plain."""
    text = event_text(event)
    if not colour:
        return text.plain
    console = Console(force_terminal=True, color_system="standard", width=1_000, soft_wrap=True)
    with console.capture() as captured:
        console.print(text, end="")
    return captured.get()


def job_table(jobs: list[JobRecord]) -> Table:
    """History as a table, newest first."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("TIME", "STATUS", "ACTION", "TARGET", "CHANGE", "TOOK", "SOURCE", "JOB"):
        table.add_column(column, no_wrap=column != "CHANGE")
    for job in jobs:
        result = job.result
        change = _change(result.before, result.after, job.action) if result else Text()
        if job.error:
            change.append(("  " if change else "") + job.error, style="red")
        table.add_row(
            job.issued_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            _status(job.status),
            job.action,
            _target(job.cluster, job.app, job.service),
            change,
            f"{job.duration_ms:.0f} ms" if job.duration_ms is not None else "",
            Text(_source(job.source)),  # a Text: a caller's user agent is never markup
            job.job_id[:12],
        )
    return table
