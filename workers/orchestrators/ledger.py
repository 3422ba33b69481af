"""The job ledger kept on the workload itself, for platforms without transactions.

Kubernetes and Swarm have no table to record a job in, so each adapter keeps a short
history of the jobs applied to a workload in one annotation (Kubernetes) or label (Swarm)
of that workload, written in the same versioned write as the change. A redelivered job
finds itself there and reports the recorded change instead of applying it again.

The history holds the last `LEDGER_SIZE` jobs rather than only the last one: with a single
"last job" a late redelivery of job J, arriving after job K touched the same workload,
would no longer find J and would apply it a second time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

from shared.encoding import json_text
from shared.messages import ServiceState
from workers.orchestrators.base import Change

__all__ = [
    "LEDGER_KEY",
    "LEDGER_SIZE",
    "Ledger",
    "Record",
    "as_change",
    "as_record",
    "read_ledger",
    "record_change",
]

LEDGER_KEY = "triggers.container-triggers.io/jobs"
LEDGER_SIZE = 20


class Record(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What one job did to one workload."""

    action: Literal["redeploy", "scale"]
    before: ServiceState
    after: ServiceState
    status: Literal["succeeded", "skipped"] = "succeeded"
    detail: str | None = None
    clamped: bool = False
    applied_step: int | None = None
    image: str | None = None


Ledger = dict[str, Record]

_decoder = msgspec.json.Decoder(Ledger)


def read_ledger(metadata: Mapping[str, str] | None) -> Ledger:
    """The jobs recorded in a workload's annotations or labels, oldest first.

    An unreadable value (edited by hand, say) counts as empty: the worst case is that a
    redelivery of an old job applies again, which is what happens without a ledger.
    """
    raw = (metadata or {}).get(LEDGER_KEY)
    if not raw:
        return {}
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}


def record_change(ledger: Ledger, job_id: str, record: Record) -> str:
    """The ledger value with `job_id` appended, trimmed to the last `LEDGER_SIZE` jobs."""
    entries = [(k, v) for k, v in ledger.items() if k != job_id]
    entries.append((job_id, record))
    return json_text(dict(entries[-LEDGER_SIZE:]))


def as_record(service: str, change: Change, action: Literal["redeploy", "scale"]) -> Record:
    """One service's part of a change, as the ledger keeps it."""
    return Record(
        action=action,
        before=change.before[service],
        after=change.after[service],
        # The ledger is written with the change, before any rollout outcome is known.
        status="skipped" if change.status == "skipped" else "succeeded",
        detail=change.detail,
        clamped=change.clamped,
        applied_step=change.applied_step,
        image=change.image,
    )


def as_change(records: Mapping[str, Record], *, duplicate: bool) -> Change:
    """The change a job made, rebuilt from its records on each workload it touched."""
    first = next(iter(records.values()))
    details = sorted({r.detail for r in records.values() if r.detail})
    return Change(
        status="succeeded" if any(r.status == "succeeded" for r in records.values()) else "skipped",
        before={name: r.before for name, r in records.items()},
        after={name: r.after for name, r in records.items()},
        detail="; ".join(details) or None,
        clamped=first.clamped,
        applied_step=first.applied_step,
        image=first.image,
        duplicate=duplicate,
    )
