"""The console's pages: live results, jobs, dead letters, charts, approvals (triggers:
`_triggers`).

Every page is server-rendered HTML from `templates/`; the few scripts in
`static/console.js` only add to it (the live stream, pausing, copy buttons). Data comes
through the same functions as the admin API and the CLI (`shared.admin.StoreAdmin`, the
job store, `shared.dlq`), so the console cannot disagree with them.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta
from typing import Any

import msgspec
import structlog
from aiohttp import web
from multidict import MultiDictProxy, MultiMapping

from gateway.console import _charts
from gateway.console._auth import render, see_other
from gateway.console._keys import LIVE
from gateway.console._live import LiveEvent, parse_event_id
from gateway.jobs import find_job
from gateway.keys import AUDIT, BUS, JOBS, SETTINGS, STORE
from gateway.notify import notify_admin
from shared.admin import AdminError
from shared.dlq import list_dead, replay_dead
from shared.jobs import JOB_STATUSES, JobRecord, parse_since
from shared.messages import JobNotice, ResultEvent, utcnow
from shared.triggers import NAME_PATTERN

__all__ = [
    "approvals",
    "charts",
    "dead_letters",
    "decide",
    "events",
    "job",
    "jobs",
    "live",
    "replay",
]

log = structlog.get_logger("triggers.console")

RESULT_STATUSES = ("succeeded", "failed", "skipped")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
# Rows the live view starts with, and keeps (older rows drop off the bottom).
LIVE_ROWS = 50
# A tab hears at least this often, so a dead connection is noticed and proxies keep it.
KEEPALIVE = 15.0
# How far back a reconnect that this process's ring cannot serve reads the history.
_REPLAY_WINDOW = timedelta(hours=1)
_CHART_ITEMS = 5000
_REPLICA_WINDOWS = (timedelta(hours=1), timedelta(hours=6), timedelta(hours=24))


class _BadFilter(Exception):
    """A filter value the page cannot take; shown above the form (400)."""


def _name(query: MultiMapping[str], key: str) -> str | None:
    value = query.get(key, "").strip()
    if not value:
        return None
    if not NAME_PATTERN.match(value):
        msg = f"{key} must be a cluster, app or service name, got {value[:32]!r}"
        raise _BadFilter(msg)
    return value


def _choice(query: MultiMapping[str], key: str, choices: tuple[str, ...]) -> str | None:
    value = query.get(key, "").strip()
    if not value:
        return None
    if value not in choices:
        msg = f"{key} must be one of {', '.join(choices)}, got {value[:32]!r}"
        raise _BadFilter(msg)
    return value


# --- live results ---------------------------------------------------------------------


def _live_filters(query: MultiMapping[str]) -> dict[str, str | None]:
    return {
        "cluster": _name(query, "cluster"),
        "app": _name(query, "app"),
        "status": _choice(query, "status", RESULT_STATUSES),
    }


def _matches(filters: dict[str, str | None], event: ResultEvent | JobNotice) -> bool:
    return all(value is None or getattr(event, key) == value for key, value in filters.items())


async def live(request: web.Request) -> web.StreamResponse:
    """GET /ui: the newest results, then live ones as they come (Server-Sent Events)."""
    try:
        filters = _live_filters(request.query)
    except _BadFilter as exc:
        return render(request, "live.html", status=400, error=str(exc), filters={}, rows=[])
    hub = request.app[LIVE]
    # Subscribed before the history is read, and the stream resumes from this position:
    # a result that comes in between is in both, and the page shows it once.
    connected = await hub.ensure_subscribed(request.app[BUS])
    resume = hub.current_id()
    recent = await request.app[JOBS].list(
        cluster=filters["cluster"], app=filters["app"], status=filters["status"], limit=LIVE_ROWS
    )
    # Finished jobs by their result; a job rolling out by its latest `running` notice.
    rows = [
        job.result if job.result is not None else _running(job)
        for job in recent
        if job.result is not None or job.status == "running"
    ]
    return render(
        request,
        "live.html",
        filters=filters,
        rows=rows,
        resume=resume,
        connected=connected,
        statuses=RESULT_STATUSES,
    )


def _running(job: JobRecord) -> JobNotice:
    """A running job as its latest `running` notice said it (the live rows' shape)."""
    return JobNotice(
        job_id=job.job_id,
        trigger_id=job.trigger_id,
        action=job.action,
        cluster=job.cluster,
        app=job.app,
        service=job.service,
        attempt=job.attempt,
        correlation_id=job.correlation_id,
        source=job.source,
        issued_at=job.issued_at,
        at=job.started_at or job.issued_at,
        progress=job.progress,
        progress_at=job.progress_at,
    )


def _sse(live: LiveEvent | None, event: ResultEvent | JobNotice, event_id: str) -> bytes:
    data = msgspec.json.encode(
        {"job": event.job_id, "status": event.status, "row": live.row if live else None}
    )
    return f"id: {event_id}\nevent: result\ndata: {data.decode()}\n\n".encode()


async def _replay(
    request: web.Request, response: web.StreamResponse, resume: str, at_seq: int, filters: Any
) -> None:
    """What a reconnecting tab missed: from this process's ring, else from the history."""
    hub = request.app[LIVE]
    parsed = parse_event_id(resume)
    if parsed is None:
        return
    boot, seq, finished = parsed
    missed = hub.after(seq) if boot == hub.boot else None
    if missed is not None:
        for item in missed:
            if item.seq <= at_seq and _matches(filters, item.event):
                await response.write(_sse(item, item.event, item.id))
        return
    history = await request.app[JOBS].list(
        cluster=filters["cluster"],
        app=filters["app"],
        status=filters["status"],
        since=finished - _REPLAY_WINDOW,
        limit=1000,
        oldest_first=True,
    )
    render_row = hub.render
    for job in history:
        event = job.result
        # A second of slack: the finish times of two machines' clocks.
        if event is None or event.finished_at < finished - timedelta(seconds=1):
            continue
        millis = int(event.finished_at.timestamp() * 1000)
        row = LiveEvent("", 0, event, render_row(event))
        await response.write(_sse(row, event, f"{hub.boot}.{at_seq}.{millis}"))


async def events(request: web.Request) -> web.StreamResponse:
    """GET /ui/events: results as Server-Sent Events, resumed from ``Last-Event-ID``."""
    filters = _live_filters(request.query)
    hub = request.app[LIVE]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            # A proxy must pass each event on at once, not buffer the stream.
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    try:
        # The browser reconnects 3 s after the stream ends (shutdown, a broker outage).
        await response.write(b"retry: 3000\n\n")
        if not await hub.ensure_subscribed(request.app[BUS]):
            await response.write(b"event: unavailable\ndata: {}\n\n")
            return response
        with hub.listen() as listener:
            # Listening first, replaying second: nothing falls between the two.
            at_seq = hub.seq
            await response.write(b"event: ready\ndata: {}\n\n")
            resume = request.headers.get("Last-Event-ID") or request.query.get("after")
            if resume:
                await _replay(request, response, resume, at_seq, filters)
            while True:
                try:
                    item = await asyncio.wait_for(listener.queue.get(), KEEPALIVE)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if item is None:
                    break
                if item.seq > at_seq and _matches(filters, item.event):
                    await response.write(_sse(item, item.event, item.id))
    except (ConnectionResetError, asyncio.CancelledError):
        # The tab went away (or the gateway stops): nothing more to send.
        pass
    return response


# --- jobs -------------------------------------------------------------------------


def _limit(query: MultiMapping[str]) -> int:
    text = query.get("limit", "").strip() or "100"
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        msg = "limit must be a whole number from 1 to 1000"
        raise _BadFilter(msg)
    return int(text)


async def jobs(request: web.Request) -> web.StreamResponse:
    """GET /ui/jobs: the history, with the filters of `triggers history`."""
    query = request.query
    values = {
        key: query.get(key, "")
        for key in ("cluster", "app", "service", "action", "status", "since", "limit")
    }
    try:
        since_text = query.get("since", "").strip()
        since = parse_since(since_text) if since_text else None
        limit = _limit(query)
        found = await request.app[JOBS].list(
            cluster=_name(query, "cluster"),
            app=_name(query, "app"),
            service=_name(query, "service"),
            action=_choice(query, "action", ("redeploy", "scale")),
            status=_choice(query, "status", JOB_STATUSES),
            since=since,
            limit=limit,
        )
    except (_BadFilter, ValueError) as exc:
        return render(
            request,
            "jobs.html",
            status=400,
            error=str(exc),
            jobs=[],
            values=values,
            statuses=JOB_STATUSES,
        )
    return render(request, "jobs.html", jobs=found, values=values, statuses=JOB_STATUSES)


def _timeline(job: JobRecord) -> list[tuple[str, datetime, float | None]]:
    """The job's steps with their times and seconds since it was issued."""
    steps = [
        ("issued", job.issued_at),
        ("accepted", job.accepted_at),
        ("running", job.started_at),
        (job.status if job.result else "finished", job.finished_at),
    ]
    return [
        (name, moment, (moment - job.issued_at).total_seconds())
        for name, moment in steps
        if moment is not None
    ]


def _diff(result: ResultEvent | None) -> list[dict[str, Any]]:
    """Per service touched: each field before and after, and whether it changed."""
    if result is None:
        return []
    rows = []
    for service in sorted(set(result.before) | set(result.after)):
        old, new = result.before.get(service), result.after.get(service)
        for field in ("replicas", "image", "revision"):
            was = getattr(old, field) if old else None
            now = getattr(new, field) if new else None
            rows.append(
                {
                    "service": service,
                    "field": field,
                    "before": was,
                    "after": now,
                    "changed": was != now,
                }
            )
    return rows


async def job(request: web.Request) -> web.StreamResponse:
    """GET /ui/jobs/{job_id}: timeline, before/after, source event, correlation id."""
    job_id = request.match_info["job_id"]
    found = await find_job(request, job_id) if _JOB_ID.match(job_id) else None
    if found is None:
        return render(request, "missing.html", status=404, what=f"job {job_id[:40]}")
    return render(
        request, "job.html", job=found, timeline=_timeline(found), diff=_diff(found.result)
    )


# --- dead letters ----------------------------------------------------------------------


async def dead_letters(request: web.Request) -> web.StreamResponse:
    """GET /ui/dead-letters: dead commands and why each died (they stay in the queue)."""
    if not request.app[BUS].durable:
        return render(
            request,
            "dead_letters.html",
            dead=[],
            error="No broker: nothing is dead-lettered by the in-process bus.",
            outcome=None,
        )
    try:
        async with asyncio.timeout(10):
            dead = await list_dead(request.app[SETTINGS], limit=200)
    except Exception as exc:  # the broker is down: say so on the page
        log.warning("console.dead_letters_failed", error=repr(exc))
        return render(
            request,
            "dead_letters.html",
            status=503,
            dead=[],
            error=f"The broker cannot be reached: {exc}",
            outcome=None,
        )
    outcome = {k: request.query.get(k) for k in ("replayed", "kept", "missing")}
    return render(
        request,
        "dead_letters.html",
        dead=dead,
        error=None,
        outcome=outcome if any(outcome.values()) else None,
    )


async def replay(request: web.Request, form: MultiDictProxy[str]) -> web.StreamResponse:
    """POST /ui/dead-letters/replay: send the chosen (or all) dead commands back."""
    ids = set(form.getall("id", []))
    if form.get("all") != "yes" and not ids:
        return see_other("/ui/dead-letters")
    outcome = await replay_dead(request.app[SETTINGS], None if form.get("all") == "yes" else ids)
    log.info("console.dead_letters_replayed", replayed=len(outcome["replayed"]))
    counts = "&".join(
        f"{k}={len(outcome[v])}"
        for k, v in (("replayed", "replayed"), ("kept", "kept"), ("missing", "not_found"))
    )
    return see_other(f"/ui/dead-letters?{counts}")


# --- charts ----------------------------------------------------------------------------


async def charts(request: web.Request) -> web.StreamResponse:
    """GET /ui/charts: calls and results per minute; replicas of a service over time."""
    now = utcnow()
    await request.app[AUDIT].flush()
    calls = await request.app[STORE].list_audit(limit=_CHART_ITEMS)
    call_buckets = _charts.per_minute(
        ((c.at, c.outcome) for c in calls), ("accepted", "ignored", "rejected"), now
    )
    recent = await request.app[JOBS].list(since=now - timedelta(hours=1), limit=_CHART_ITEMS)
    result_buckets = _charts.per_minute(
        ((j.result.finished_at, j.status) for j in recent if j.result is not None),
        RESULT_STATUSES,
        now,
    )
    query = request.query
    try:
        cluster, app, service = (
            _name(query, "cluster"),
            _name(query, "app"),
            _name(query, "service"),
        )
    except _BadFilter as exc:
        cluster = app = service = None
        error: str | None = str(exc)
    else:
        error = None
    if not (cluster and app and service):
        # The service most recently changed, so the page shows something at once.
        latest = next((j.result for j in recent if j.result is not None and j.result.after), None)
        if latest is not None and not (cluster or app or service):
            cluster, app, service = latest.cluster, latest.app, sorted(latest.after)[0]
    replicas = None
    points: list[tuple[datetime, int]] = []
    if cluster and app and service:
        start = now - timedelta(hours=24)
        history = await request.app[JOBS].list(
            cluster=cluster, app=app, since=start, limit=_CHART_ITEMS, oldest_first=True
        )
        for record in history:
            result = record.result
            if result is None or service not in result.after:
                continue
            if not points and service in result.before:
                points.append((record.issued_at, result.before[service].replicas))
            points.append((result.finished_at, result.after[service].replicas))
        # The shortest of the last hour, 6 hours or day that holds every change.
        oldest = points[0][0] if points else now
        start = next((now - span for span in _REPLICA_WINDOWS if oldest >= now - span), start)
        replicas = _charts.step_line(f"Replicas of {cluster}/{app}/{service}", points, start, now)
    return render(
        request,
        "charts.html",
        calls=_charts.stacked_bars("Calls per minute by outcome", call_buckets),
        call_buckets=call_buckets,
        results=_charts.stacked_bars("Results per minute by status", result_buckets),
        result_buckets=result_buckets,
        replicas=replicas,
        points=points,
        target={"cluster": cluster or "", "app": app or "", "service": service or ""},
        error=error,
    )


# --- approvals --------------------------------------------------------------------------


async def approvals(request: web.Request) -> web.StreamResponse:
    """GET /ui/approvals: calls held for approval, with approve and reject."""
    pending = (await notify_admin(request).list_approvals("pending")).approvals
    done = request.query.get("done")
    return render(
        request,
        "approvals.html",
        pending=pending,
        done=done if done in ("approved", "rejected") else None,
        error=None,
    )


def _check_decision(job_id: str, who: str, reason: str) -> None:
    if not _JOB_ID.match(job_id) or not who or not reason:
        msg = "give your name (and, to reject, a reason)"
        raise AdminError(422, "invalid_body", msg)


async def decide(request: web.Request, form: MultiDictProxy[str]) -> web.StreamResponse:
    """POST /ui/approvals/{job_id}/approve|reject: one decision, by the name given."""
    job_id = request.match_info["job_id"]
    decision = request.match_info["decision"]
    who = form.get("approver", "").strip()[:100]
    reason = form.get("reason", "").strip()[:500]
    admin = notify_admin(request)
    try:
        _check_decision(job_id, who, reason if decision == "reject" else "-")
        if decision == "approve":
            await admin.approve(job_id, who)
        else:
            await admin.reject(job_id, who, reason)
    except AdminError as exc:
        pending = (await admin.list_approvals("pending")).approvals
        return render(
            request,
            "approvals.html",
            status=exc.status,
            pending=pending,
            done=None,
            error=exc.detail,
        )
    log.info("console.approval_decided", job_id=job_id, decision=decision)
    return see_other(f"/ui/approvals?done={decision}d")
