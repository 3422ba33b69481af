"""The audit trail of trigger calls: one entry per call to ``/hook/``, from the call middleware.

Each entry has the outcome, status, error code, time, caller address and user agent,
never the query string (it carries the secret). Entries are written in batches by
`shared.audit.AuditLog`, off the hot path.

Calls refused before their secret was verified (400, 403, 429, ...) cost nothing to send,
so they are not one entry each: `UnauthenticatedTally` counts them per client address and
minute and writes one entry per address and minute (`count` calls, the codes seen: see
`shared.audit.UnauthenticatedTally`), so
a flood grows the table by at most one row per address a minute. The gateways prune
entries older than ``TRIGGERS_AUDIT_RETENTION`` (`gateway.invalidation`).
"""

from __future__ import annotations

import re

from aiohttp import web

from gateway.client import client_address
from gateway.keys import AUDIT, AUTHENTICATED, ERROR, LOG_FIELDS, OUTCOME, UNAUTHENTICATED
from gateway.outcomes import Accepted, CallOutcome, Ignored
from shared.audit import AuditEntry, Outcome, WaitOutcome
from shared.messages import utcnow

__all__ = ["record_call"]

# Details may quote a caller's bad value; a long hex run there could be (part of) a secret
# sent in the wrong parameter, so it is masked before it is stored.
_HEX_RUN = re.compile(r"[0-9a-fA-F]{24,}")


def _masked(detail: str | None) -> str | None:
    return _HEX_RUN.sub("[hex value masked]", detail) if detail else detail


def _outcome(status: int, outcome: CallOutcome | None) -> tuple[Outcome, WaitOutcome | None]:
    """The call's outcome, and for a call with wait=N what it waited for.

    A call whose command was published is `accepted`, whatever its job's result (a call
    with wait=N answers 200 for a success and 422 for a failure); so is a held call and
    an idempotent replay. Any other 2xx means it was authenticated but held back (a
    cooldown, an event the trigger does not act on).
    """
    if isinstance(outcome, Accepted) and (outcome.wait <= 0 or outcome.waited is not None):
        return "accepted", outcome.waited
    if isinstance(outcome, Ignored) or (200 <= status < 300 and status != 202):
        return "ignored", None
    return ("accepted" if status < 300 else "rejected"), None


def record_call(request: web.Request, response: web.StreamResponse) -> None:
    """Record one entry for a call to ``/hook/`` (with its final status, errors mapped)."""
    fields = request.get(LOG_FIELDS, {})
    called = request.get(OUTCOME)
    code, detail = request.get(ERROR, (None, None))
    if isinstance(called, Ignored):
        code, detail = called.reason, called.detail
    outcome, waited = _outcome(response.status, called)
    entry = AuditEntry(
        at=utcnow(),
        outcome=outcome,
        status=response.status,
        trigger_id=fields.get("trigger_id"),
        reason=code,
        detail=_masked(detail),
        method=request.method,
        remote=client_address(request),
        user_agent=request.headers.get("User-Agent", "")[:200] or None,
        job_id=fields.get("job_id"),
        request_id=response.headers.get("X-Request-ID") or None,
        wait_outcome=waited,
    )
    if outcome == "rejected" and not request.get(AUTHENTICATED, False):
        request.app[UNAUTHENTICATED].record(entry)
    else:
        request.app[AUDIT].record(entry)
