"""Jobs over HTTP: ``GET /v1/jobs/{job_id}`` and ``GET /v1/jobs``, and what a trigger
call's answer says of its job (`gateway.hook`).

Answers of a call with ``wait=N``:
- 200 with the job when it succeeded or was skipped (nothing to do is not an error);
- 422 ``job_failed`` with the job when it failed. Not 502: ``curl --retry`` retries 5xx,
  and a retried trigger call is a new job, so a failing redeploy would run again and again;
- 202 with the job id and ``status_url`` when N seconds passed first.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
import structlog
from aiohttp import web

from gateway.admin import is_admin, require_admin
from gateway.errors import ApiError, json_response
from gateway.keys import ACCEPTED, JOBS, SETTINGS, UNSEEN_WAITERS
from shared.jobs import (
    JOB_STATUSES,
    JobLookupError,
    JobRecord,
    job_by_prefix,
    job_json,
    parse_since,
)
from shared.settings import Settings

__all__ = [
    "UNSEEN_WAITERS_LIMIT",
    "find_job",
    "handle_job",
    "handle_jobs",
    "job_status",
    "parse_wait",
    "public_job",
    "safe_error",
    "status_url",
]

log = structlog.get_logger("triggers.gateway")

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_JOB_PREFIX = re.compile(r"^[0-9a-f]{4,31}$")
_WAIT = re.compile(r"^[0-9]{1,4}(?:\.[0-9]{1,3})?$")
# Before a 404, the store is read again after each of these pauses (accepted records are
# written every ACCEPTED_FLUSH_INTERVAL, 50 ms, by the gateway that accepted the job, later
# on a busy machine), by at most UNSEEN_WAITERS_LIMIT lookups at a time: a flood of made-up
# ids costs four reads each, no more, and holds no more than that many requests for 1 s.
_UNSEEN_RETRIES = (0.15, 0.35, 0.5)
UNSEEN_WAITERS_LIMIT = 16
_LIST_FILTERS = ("cluster", "app", "service", "action", "status", "since", "limit")


def status_url(settings: Settings, job_id: str) -> str:
    """Where a caller polls the job."""
    return f"{settings.public_url.rstrip('/')}/v1/jobs/{job_id}"


def parse_wait(text: str | None, settings: Settings) -> float:
    """Seconds to wait for the result: 0 (the default) answers as soon as it is accepted."""
    if text is None:
        return 0.0
    limit = settings.max_wait
    if not _WAIT.fullmatch(text) or float(text) > limit:
        raise ApiError(
            400,
            "invalid_wait",
            f"wait must be a number of seconds from 0 to {limit:g}, got {text[:32]!r}",
        )
    return float(text)


# What a job's error may say to whoever holds its id: infrastructure details (endpoints,
# kubeconfig paths, context names, addresses) are masked; the admin API shows them whole.
_HIDDEN = (
    (re.compile(r"\s*\([^()]*\)"), ""),
    (re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+"), "[endpoint]"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "[address]"),
    (re.compile(r"\[[0-9a-fA-F:]*:[0-9a-fA-F:]+\](?::\d+)?"), "[address]"),
    (re.compile(r"\b[\w.-]+:\d{2,5}\b"), "[endpoint]"),
    (re.compile(r"(?<![\w.])~?/[^\s'\",;)]+"), "[path]"),
    (re.compile(r"\bcontexts? '[^']*'"), "context [hidden]"),
    (re.compile(r"\bkubeconfig \S+"), "kubeconfig [hidden]"),
)


def safe_error(error: str | None) -> str | None:
    """A job's error as a caller may read it: what failed, without where it runs."""
    if error is None:
        return None
    for pattern, replacement in _HIDDEN:
        error = pattern.sub(replacement, error)
    return error[:300]


def public_job(job: JobRecord, settings: Settings, *, admin: bool = False) -> dict[str, Any]:
    data = job_json(job, status_url=status_url(settings, job.job_id))
    # The top level `error` of an answer is always a code (see gateway/errors.py); the
    # job's own error message is in `result.error`.
    data.pop("error", None)
    if admin:
        return data
    # The job id travels in registries' delivery logs: whoever holds it sees the outcome,
    # not the callers' addresses, the application's images or where the cluster runs.
    data.pop("source", None)
    result = data.get("result")
    if isinstance(result, dict):
        for name in ("source", "worker", "orchestrator"):
            result.pop(name, None)
        result["error"] = safe_error(result.get("error"))
        result["detail"] = safe_error(result.get("detail"))
        for side in ("before", "after"):
            for state in (result.get(side) or {}).values():
                state.pop("image", None)
        result.pop("image", None)
    return data


async def find_job(request: web.Request, job_id: str) -> JobRecord | None:
    """The job from the history, completed by this process's unwritten `accepted` record;
    None when it is still unknown after a few short retries."""
    job = await _find(request, job_id)
    waiters = request.app[UNSEEN_WAITERS]
    if job is None and not waiters.locked():
        # Accepted by another gateway a moment ago, its record may still be on its way.
        async with waiters:
            for pause in _UNSEEN_RETRIES:
                await asyncio.sleep(pause)
                if (job := await _find(request, job_id)) is not None:
                    break
    return job


async def _find(request: web.Request, job_id: str) -> JobRecord | None:
    job = await request.app[JOBS].get(job_id)
    for accepted in request.app[ACCEPTED].unwritten():
        if accepted.job_id == job_id:
            if job is None:
                return accepted
            # A worker's notice may have been recorded before this record was written.
            return msgspec.structs.replace(job, accepted_at=job.accepted_at or accepted.accepted_at)
    return job


async def job_status(request: web.Request, job_id: str) -> str:
    """The job's status as this gateway knows it; "accepted" when it is not recorded yet."""
    try:
        job = await _find(request, job_id)
    except Exception:  # the history is optional here: the job id is what the caller needs
        job = None
    return job.status if job is not None else "accepted"


async def handle_job(request: web.Request) -> web.Response:
    """``GET /v1/jobs/{job_id}``: the job's state and, once finished, its result.

    The job id is a 128-bit random capability handed to the caller who held the trigger's
    secret, so knowing it is what grants access (like the trigger URL itself).
    """
    job_id = request.match_info["job_id"]
    if not _JOB_ID.fullmatch(job_id):
        if _JOB_PREFIX.fullmatch(job_id) and "Authorization" in request.headers:
            return await _job_by_prefix(request, job_id)
        raise ApiError(
            400,
            "invalid_job_id",
            "a job id is 32 lowercase hex characters, as a 202 answer gives "
            "(a shorter prefix needs the admin token)",
        )
    job = await find_job(request, job_id)
    settings = request.app[SETTINGS]
    if job is None:
        days = settings.job_retention / 86400
        raise ApiError(
            404,
            "job_not_found",
            f"no job {job_id}: unknown, or older than the history keeps ({days:g} days)",
        )
    return json_response(public_job(job, settings, admin=is_admin(request)))


async def _job_by_prefix(request: web.Request, prefix: str) -> web.Response:
    """An operator's short job id (`triggers job 3f2a --server`): only with the admin
    token, since guessing a few characters must not stand in for the 128-bit id."""
    require_admin(request)
    try:
        job = await job_by_prefix(request.app[JOBS], prefix)
    except JobLookupError as exc:
        if exc.ambiguous:
            raise ApiError(409, "ambiguous_job_id", str(exc)) from None
        raise ApiError(404, "job_not_found", str(exc)) from None
    return json_response(public_job(job, request.app[SETTINGS], admin=True))


async def handle_jobs(request: web.Request) -> web.Response:
    """``GET /v1/jobs?cluster=&app=&service=&action=&status=&since=&limit=``, newest first."""
    require_admin(request)
    query = request.query
    unknown = sorted(set(query) - set(_LIST_FILTERS))
    if unknown:
        raise ApiError(
            400,
            "unknown_parameter",
            f"unknown parameter {unknown[0][:32]!r}; filter with {', '.join(_LIST_FILTERS)}",
        )
    status = query.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise ApiError(400, "invalid_status", f"status must be one of {', '.join(JOB_STATUSES)}")
    try:
        since = parse_since(query["since"]) if "since" in query else None
    except ValueError as exc:
        raise ApiError(400, "invalid_since", str(exc)) from None
    limit_text = query.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
        raise ApiError(400, "invalid_limit", "limit must be a whole number from 1 to 1000")
    jobs = await request.app[JOBS].list(
        cluster=query.get("cluster"),
        app=query.get("app"),
        service=query.get("service"),
        action=query.get("action"),
        status=status,
        since=since,
        limit=int(limit_text),
    )
    settings = request.app[SETTINGS]
    jobs_json = [public_job(job, settings, admin=True) for job in jobs]
    return json_response({"jobs": jobs_json, "count": len(jobs)})
