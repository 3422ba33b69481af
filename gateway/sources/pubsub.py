"""Google Artifact Registry / Container Registry notifications through a Pub/Sub push
subscription on the ``gcr`` topic.

https://cloud.google.com/artifact-registry/docs/configure-notifications
The push body wraps the registry's message: ``message.data`` is base64 of
``{"action": "INSERT", "digest": "<repo>@sha256:...", "tag": "<repo>:<tag>"}``. A push
subscription cannot add headers but may call a URL with a query string, so the URL
secret authenticates it; with an authenticated push subscription the gateway also checks
its OIDC token (``--signature google-oidc --oidc-audience AUD``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from gateway.sources._event import (
    Headers,
    ImagePush,
    Parsed,
    PushAction,
    SourceFormat,
    UnusableBody,
    convert,
)
from shared.images import parse_image

__all__ = ["PUBSUB"]

_ACTIONS: dict[str, PushAction] = {"INSERT": "push", "DELETE": "delete"}


class _Message(msgspec.Struct, frozen=True, rename="camel"):
    data: str
    message_id: str | None = None
    publish_time: str | None = None


class _Push(msgspec.Struct, frozen=True):
    message: _Message
    subscription: str | None = None


class _Notification(msgspec.Struct, frozen=True):
    action: str
    digest: str | None = None
    tag: str | None = None


def _detect(payload: Any, headers: Headers, content_type: str) -> bool:
    message = payload.get("message") if isinstance(payload, dict) else None
    return isinstance(message, dict) and isinstance(message.get("data"), str)


def _parse(payload: Any, headers: Headers) -> Parsed:
    push = convert(payload, _Push, "Pub/Sub push")
    try:
        data = msgspec.json.decode(base64.b64decode(push.message.data, validate=True))
    except (binascii.Error, msgspec.DecodeError, ValueError):
        msg = "Pub/Sub message.data is not base64 of a JSON registry notification"
        raise UnusableBody(msg) from None
    note = convert(data, _Notification, "Artifact Registry notification")
    # "tag" is the full reference repo:tag; "digest" is repo@sha256:... (either may be absent).
    by_tag = parse_image(note.tag) if note.tag else None
    by_digest = parse_image(note.digest) if note.digest else None
    reference = by_tag or by_digest
    if reference is None:
        msg = "Artifact Registry notification names neither a tag nor a digest"
        raise UnusableBody(msg)
    image = ImagePush(
        action=_ACTIONS.get(note.action.upper(), "other"),
        repository=reference.repository.lower(),
        tag=by_tag.tag if by_tag else None,
        digest=by_digest.digest if by_digest else None,
        pushed_at=push.message.publish_time,
        kind=note.action,
    )
    return Parsed(source="gar", pushes=(image,), event_id=push.message.message_id)


PUBSUB = SourceFormat(
    name="gar", label="Google Artifact Registry (Pub/Sub)", detect=_detect, parse=_parse
)
