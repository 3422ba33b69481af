"""Human-readable rendering of triggers and result events for the terminal."""

from __future__ import annotations

from typing import Any

import click
import msgspec

from shared.messages import ResultEvent, ServiceState
from shared.triggers import Trigger, encode_trigger_url

__all__ = ["event_line", "trigger_json", "trigger_table"]

_STATUS_COLOUR = {"succeeded": "green", "failed": "red", "skipped": "yellow"}


def trigger_json(
    trigger: Trigger, *, url: str | None = None, secret: str | None = None
) -> dict[str, Any]:
    """A trigger as `--json` prints it; `url` and `secret` only at creation."""
    data: dict[str, Any] = {
        "id": trigger.id,
        "cluster": trigger.cluster,
        "app": trigger.app,
        "action": trigger.action,
        "service": trigger.service,
        "image_update": trigger.image_update,
        "namespace": trigger.namespace,
        "trigger_url": encode_trigger_url(trigger.cluster, trigger.app, trigger.action, trigger.id),
        "created_at": trigger.created_at.isoformat(),
        "revoked_at": trigger.revoked_at.isoformat() if trigger.revoked_at else None,
        "status": "revoked" if trigger.revoked else "active",
        # Never the signing secret: like the secret, it is shown once, at creation.
        "options": {
            k: v
            for k, v in msgspec.structs.asdict(trigger.options).items()
            if k != "signing_secret" and v not in (None, False)
        },
    }
    if url is not None:
        data["url"] = url
    if secret is not None:
        data["secret"] = secret
    return data


def trigger_table(triggers: list[Trigger]) -> str:
    """Aligned columns, one trigger a row."""
    header = ("ID", "CLUSTER", "APP", "ACTION", "SERVICE", "STATUS", "CREATED")
    rows = [header] + [
        (
            t.id,
            t.cluster,
            t.app,
            t.action + (" (image)" if t.image_update else ""),
            t.service or "-",
            "revoked" if t.revoked else "active",
            t.created_at.strftime("%Y-%m-%d %H:%M"),
        )
        for t in triggers
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _states(before: dict[str, ServiceState], after: dict[str, ServiceState], action: str) -> str:
    parts = []
    for name in sorted(after or before):
        old, new = before.get(name), after.get(name)
        if old is None or new is None:
            continue
        if action == "scale":
            parts.append(f"{name} {old.replicas}→{new.replicas} replicas")
        else:
            image = f" {old.image}→{new.image}" if old.image != new.image else ""
            parts.append(f"{name} rev {old.revision}→{new.revision}{image}")
    return ", ".join(parts)


def event_line(event: ResultEvent, *, colour: bool = True) -> str:
    """One line per result: time, status, action, target, before → after, why."""
    status = event.status.upper().ljust(9)
    if colour:
        status = click.style(status, fg=_STATUS_COLOUR.get(event.status), bold=True)
    target = f"{event.cluster}/{event.app}" + (f"/{event.service}" if event.service else "")
    parts = [event.finished_at.strftime("%H:%M:%S"), status, event.action.ljust(8), target]
    change = _states(event.before, event.after, event.action)
    if change:
        parts.append(change)
    if event.error:
        parts.append(f"error: {event.error}")
    elif event.detail:
        parts.append(f"({event.detail})")
    origin = event.source.origin
    if origin is not None:
        what = origin.alert or origin.repository or ""
        if origin.alert_status:
            what += f" {origin.alert_status}"
        elif origin.tag:
            what += f":{origin.tag}"
        parts.append(f"via {origin.source} {what}".rstrip())
    if event.duration_ms is not None:
        parts.append(f"{event.duration_ms:.0f} ms")
    parts.append(f"job {event.job_id[:12]}")
    return "  ".join(parts)
