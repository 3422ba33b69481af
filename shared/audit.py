"""The audit trail: one entry per trigger call, never the secret, written in batches.

Writing is off the hot path: `AuditLog` is a `shared.batch.WriteBehind` queue, flushed
every `interval` seconds or every `batch` entries in one multi-row insert; when the store
is down the entries stay queued, and when the queue is full new ones are dropped and
counted (`audit.dropped`) rather than slowing calls down.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol

import msgspec

from shared.batch import WriteBehind

__all__ = [
    "WAIT_OUTCOMES",
    "AuditEntry",
    "AuditLog",
    "AuditSink",
    "Outcome",
    "UnauthenticatedTally",
    "WaitOutcome",
]

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
    # Calls this entry stands for: unauthenticated rejections are one entry per address
    # and minute (`gateway.audit`).
    count: int = 1
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


# Addresses tallied per minute at most; beyond, their calls count under one "other" entry.
_MAX_ADDRESSES = 10_000


class UnauthenticatedTally:
    """Unauthenticated rejections by address and minute: an address's first of a minute is
    written as it is (so a lone mistake shows at once), the rest of that minute as one
    entry with their count when the minute has passed (`tick`)."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit
        self._minute = ""
        self._first: set[str] = set()
        self._tally: dict[str, tuple[Counter[str], set[str | None], AuditEntry]] = {}

    def record(self, entry: AuditEntry) -> None:
        """Count one rejection."""
        self.tick(entry.at)
        address = entry.remote or "unknown"
        if address not in self._first:
            if len(self._first) < _MAX_ADDRESSES:
                self._first.add(address)
                self._audit.record(entry)
                return
            address = "other"
        codes, triggers, _ = self._tally.get(address, (Counter(), set(), entry))
        codes[f"{entry.status} {entry.reason}"] += 1
        if len(triggers) < 2:
            triggers.add(entry.trigger_id)
        self._tally[address] = (codes, triggers, entry)

    def tick(self, now: datetime) -> None:
        """Flush when the minute of `now` is not the tallied one (called every few seconds)."""
        minute = now.strftime("%Y-%m-%dT%H:%M")
        if minute != self._minute:
            self.flush()
            self._minute = minute

    def flush(self) -> None:
        """Write one entry per address of the minute tallied so far."""
        for address, (codes, triggers, last) in self._tally.items():
            count = sum(codes.values())
            shown = ", ".join(f"{code} x{n}" for code, n in codes.most_common(5))
            self._audit.record(
                msgspec.structs.replace(
                    last,
                    remote=address,
                    reason="unauthenticated",
                    detail=f"{count} more calls refused before authentication in {self._minute}: "
                    f"{shown}",
                    trigger_id=next(iter(triggers)) if len(triggers) == 1 else None,
                    job_id=None,
                    request_id=None,
                    count=count,
                )
            )
        self._tally.clear()
        self._first.clear()
