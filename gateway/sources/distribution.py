"""Docker Registry (CNCF distribution) notifications, media types events.v1 and v2.

https://distribution.github.io/distribution/about/notifications/
The registry sends the headers configured for the endpoint, so it can carry
``Authorization: Bearer <trigger secret>``; it does not sign.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.sources._event import (
    Headers,
    ImagePush,
    Parsed,
    PushAction,
    SourceFormat,
    convert,
)

__all__ = ["DISTRIBUTION", "DISTRIBUTION_MEDIA_TYPES"]

DISTRIBUTION_MEDIA_TYPES = (
    "application/vnd.docker.distribution.events.v1+json",
    "application/vnd.docker.distribution.events.v2+json",
)
_ACTIONS: dict[str, PushAction] = {"push": "push", "pull": "pull", "delete": "delete"}


class _Target(msgspec.Struct, frozen=True, rename="camel"):
    repository: str
    media_type: str | None = None
    digest: str | None = None
    tag: str | None = None


class _Request(msgspec.Struct, frozen=True):
    host: str | None = None


class _Event(msgspec.Struct, frozen=True):
    action: str
    target: _Target
    id: str | None = None
    timestamp: str | None = None
    request: _Request | None = None


class _Envelope(msgspec.Struct, frozen=True):
    events: list[_Event]


def _detect(payload: Any, headers: Headers, content_type: str) -> bool:
    if content_type in DISTRIBUTION_MEDIA_TYPES:
        return True
    events = payload.get("events") if isinstance(payload, dict) else None
    return (
        isinstance(events, list)
        and bool(events)
        and all(isinstance(e, dict) and "action" in e and "target" in e for e in events)
    )


def _is_manifest(target: _Target) -> bool:
    # Layer (blob) pushes precede every manifest push; only the manifest names an image.
    media_type = target.media_type or ""
    return "manifest" in media_type or "image.index" in media_type or bool(target.tag)


def _push(event: _Event) -> ImagePush:
    host = event.request.host if event.request else None
    action = _ACTIONS.get(event.action, "other")
    return ImagePush(
        action=action,
        repository=f"{host}/{event.target.repository}" if host else event.target.repository,
        tag=event.target.tag or None,
        digest=event.target.digest,
        pushed_at=event.timestamp,
        kind=event.action,
    )


def _parse(payload: Any, headers: Headers) -> Parsed:
    envelope = convert(payload, _Envelope, "Docker Registry notification")
    images = [e for e in envelope.events if _is_manifest(e.target)]
    if not images:
        return Parsed(
            source="distribution",
            note="only layer (blob) events; a manifest push is what deploys",
        )
    return Parsed(
        source="distribution",
        pushes=tuple(_push(e) for e in images),
        event_id=images[0].id,
    )


DISTRIBUTION = SourceFormat(
    name="distribution", label="Docker Registry notification", detect=_detect, parse=_parse
)
