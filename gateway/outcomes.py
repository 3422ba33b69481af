"""What became of an authenticated trigger call: typed outcomes, with no HTTP in them.

`gateway.calls` returns one of them; `gateway.hook` answers it over HTTP and fills the
log line; the audit and metrics middlewares read it from the request (`gateway.keys.OUTCOME`).

- `Accepted`: the broker confirmed the command (with ``wait=N``, and what the job did);
- `Held`: kept for approval, its notice confirmed: nothing runs until people approve;
- `Replayed`: an ``Idempotency-Key`` used before: the earlier job is the answer;
- `Ignored`: a valid call that does nothing, and why (a cooldown, a repeated event);
- `Refused`: a call that must be refused, with the error that says why (a 4xx).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from shared.audit import WAIT_OUTCOMES, WaitOutcome
from shared.errors import RequestError
from shared.jobs import JobRecord
from shared.messages import CommandEnvelope, ResultEvent

__all__ = [
    "Accepted",
    "CallOutcome",
    "Held",
    "Ignored",
    "Progress",
    "Refused",
    "Replayed",
]


@dataclass
class Progress:
    """What is known of a call so far: its log line says it even when the call fails."""

    event_source: str | None = None
    job_id: str | None = None
    retry_of: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True)
class Accepted:
    """Published and confirmed; with ``wait=N``, the job's result or that none came in time."""

    job_id: str
    envelope: CommandEnvelope
    record: JobRecord  # the `accepted` record queued for the history
    event: dict[str, object] | None  # what a registry push or an alert was recognised as
    wait: float = 0.0
    result: ResultEvent | None = None
    # The result was read from the history: the reply queue missed it (a broker node died).
    recorded: bool = False

    @property
    def label(self) -> str:
        """The outcome on the log line and the metrics: accepted, or what the wait saw."""
        if self.wait <= 0:
            return "accepted"
        return self.result.status if self.result is not None else "timed_out"

    @property
    def waited(self) -> WaitOutcome | None:
        """What a call with wait=N waited for, as the audit trail records it."""
        label = self.label
        for waited in WAIT_OUTCOMES:
            if label == waited:
                return waited
        return None


@dataclass(frozen=True)
class Held:
    """Kept for approval; its ``pending_approval`` notice was confirmed."""

    job_id: str
    envelope: CommandEnvelope
    event: dict[str, object] | None
    approvals_required: int
    expires_at: datetime
    label: str = field(default="pending_approval", init=False)


@dataclass(frozen=True)
class Replayed:
    """The call's ``Idempotency-Key`` was used before: the answer is that job."""

    job_id: str
    label: str = field(default="replayed", init=False)


@dataclass(frozen=True)
class Ignored:
    """A valid call this trigger does not act on, and why (answered with 200).

    `reason` is a stable code for scripts, logs and the audit trail; `detail` says it in
    words. `job_id` is the earlier job an event repeats; the policy's answers name the
    trigger and, in a cooldown, how long it has left.
    """

    reason: str
    detail: str
    job_id: str | None = None
    trigger_id: str | None = None
    cooldown_remaining: int | None = None
    label: str = field(default="ignored", init=False)


@dataclass(frozen=True)
class Refused:
    """A call refused after its secret matched (400, 401, 403, 405, 409, 422, 429)."""

    error: RequestError


CallOutcome = Accepted | Held | Replayed | Ignored | Refused
