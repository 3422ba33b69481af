"""Azure Container Registry webhooks: one event object per request.

https://learn.microsoft.com/azure/container-registry/container-registry-webhook-reference
ACR adds only the custom headers configured on the webhook, so it can carry
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

__all__ = ["ACR"]

# chart_push / chart_delete are Helm charts, quarantine a scan hold: none deploys an image.
_ACTIONS: dict[str, PushAction] = {"push": "push", "delete": "delete"}


class _Target(msgspec.Struct, frozen=True, rename="camel"):
    repository: str
    media_type: str | None = None
    digest: str | None = None
    tag: str | None = None


class _Request(msgspec.Struct, frozen=True):
    host: str


class _Event(msgspec.Struct, frozen=True):
    action: str
    target: _Target
    request: _Request
    id: str | None = None
    timestamp: str | None = None


def _detect(payload: Any, headers: Headers, content_type: str) -> bool:
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("action"), str)
        and isinstance(payload.get("target"), dict)
        and isinstance(payload.get("request"), dict)
        and "host" in payload["request"]
    )


def _parse(payload: Any, headers: Headers) -> Parsed:
    event = convert(payload, _Event, "Azure Container Registry")
    push = ImagePush(
        action=_ACTIONS.get(event.action, "other"),
        repository=f"{event.request.host}/{event.target.repository}".lower(),
        tag=event.target.tag or None,
        digest=event.target.digest or None,
        pushed_at=event.timestamp,
        kind=event.action,
    )
    return Parsed(source="acr", pushes=(push,), event_id=event.id)


ACR = SourceFormat(name="acr", label="Azure Container Registry", detect=_detect, parse=_parse)
