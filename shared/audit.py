"""The audit trail: one entry per trigger call, never the secret, written in batches.

Writing is off the hot path: `AuditLog` is a `shared.batch.WriteBehind` queue, flushed
every `interval` seconds or every `batch` entries in one multi-row insert; when the store
is down the entries stay queued, and when the queue is full new ones are dropped and
counted (`audit.dropped`) rather than slowing calls down.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol

import msgspec

from shared.batch import WriteBehind

__all__ = ["WAIT_OUTCOMES", "AuditEntry", "AuditLog", "AuditSink", "Outcome", "WaitOutcome"]

# accepted: the command was published (202, or with wait=N whatever the job's result was:
# that goes in `wait_outcome`); ignored: authenticated but held back (a cooldown, an event
# the trigger does not act on: 200); rejected: any other 4xx/5xx answer, with the error
# code as the reason.
Outcome = Literal["accepted", "ignored", "rejected"]
# What an accepted call with wait=N saw before answering.
WaitOutcome = Literal["succeeded", "failed", "skipped", "timed_out"]
WAIT_OUTCOMES: tuple[WaitOutcome, ...] = ("succeeded", "failed", "skipped", "timed_out")


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one call, who made it and from where."""

    at: datetime
    outcome: Outcome
    status: int
    trigger_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    method: str | None = None
    remote: str | None = None
    user_agent: str | None = None
    job_id: str | None = None
    request_id: str | None = None
    wait_outcome: WaitOutcome | None = None
    id: int | None = None


class AuditSink(Protocol):
    """Where entries go (the trigger store)."""

    async def record_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append entries in one write."""
        ...


class AuditLog(WriteBehind[AuditEntry]):
    """The audit trail's write-behind queue (`shared.batch.WriteBehind`)."""

    def __init__(
        self,
        store: AuditSink,
        *,
        interval: float = 0.5,
        max_pending: int = 10_000,
        batch: int = 500,
    ) -> None:
        super().__init__(
            store.record_audit,
            name="audit",
            interval=interval,
            max_pending=max_pending,
            batch=batch,
        )
