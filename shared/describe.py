"""Plain-text descriptions of a trigger and of a call's origin, the same words in the CLI
and in the web console: a policy in a few words, the ready curl commands, ``via ...``."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.api import TriggerView
from shared.messages import Source

__all__ = ["curl_lines", "duration_text", "origin_text", "policy_summary", "when_text"]


def when_text(value: datetime | None) -> str:
    """A time to the minute in UTC, ``-`` when there is none."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else "-"


def duration_text(seconds: float) -> str:
    """Seconds the way the CLI takes a duration: ``90s``, ``5m``, ``12h``, ``30d``, ``2w``."""
    whole = round(seconds)
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def policy_summary(view: TriggerView) -> str:
    """The trigger's limits in a few words, ``-`` when it has none."""
    parts = []
    if view.min_replicas is not None or view.max_replicas is not None:
        low = view.min_replicas if view.min_replicas is not None else 0
        high = view.max_replicas if view.max_replicas is not None else "∞"
        parts.append(f"replicas {low}..{high}")
    if view.cooldown:
        parts.append(f"cooldown {duration_text(view.cooldown)}")
    if view.rate_limit:
        parts.append(f"{view.rate_limit}/min")
    if view.allowed_methods != ["GET", "POST"]:
        parts.append(",".join(view.allowed_methods) + " only")
    if view.expires_at:
        parts.append(f"expires {when_text(view.expires_at)}")
    if view.request_id_idempotency:
        parts.append("X-Request-ID is the idempotency key")
    return ", ".join(parts) or "-"


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
