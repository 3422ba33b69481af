"""Harbor project webhooks: 2.x Default and CloudEvents payload formats, and Harbor 1.x
(``pushImage``, ``pullImage``, ``deleteImage``: the Default shape with other type names).

https://goharbor.io/docs/latest/working-with-projects/project-configuration/configure-webhooks/
Harbor cannot sign; it sends the policy's "Auth Header" verbatim as ``Authorization``,
so set it to ``Bearer <trigger secret>``.
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
    UnusableBody,
    convert,
)
from shared.images import parse_image

__all__ = ["HARBOR"]

_ACTIONS: dict[str, PushAction] = {
    "PUSH_ARTIFACT": "push",
    "harbor.artifact.pushed": "push",
    "PULL_ARTIFACT": "pull",
    "harbor.artifact.pulled": "pull",
    "DELETE_ARTIFACT": "delete",
    "harbor.artifact.deleted": "delete",
    # Harbor 1.x (1.9, 1.10)
    "pushImage": "push",
    "pullImage": "pull",
    "deleteImage": "delete",
}


class _Resource(msgspec.Struct, frozen=True):
    digest: str | None = None
    tag: str | None = None
    resource_url: str | None = None


class _Repository(msgspec.Struct, frozen=True):
    repo_full_name: str | None = None


class _EventData(msgspec.Struct, frozen=True):
    resources: list[_Resource] = []
    repository: _Repository | None = None


class _Default(msgspec.Struct, frozen=True):
    type: str
    event_data: _EventData
    occur_at: int | None = None


class _CloudEvent(msgspec.Struct, frozen=True):
    specversion: str
    id: str
    type: str
    data: _EventData


def _detect(payload: Any, headers: Headers, content_type: str) -> bool:
    if not isinstance(payload, dict):
        return False
    if "specversion" in payload:
        return str(payload.get("type", "")).startswith("harbor.")
    return isinstance(payload.get("event_data"), dict) and "type" in payload


def _push(kind: str, resource: _Resource, pushed_at: str | None) -> ImagePush:
    action = _ACTIONS.get(kind, "other")
    if not resource.resource_url:
        if action == "push":
            msg = "Harbor resource has no resource_url, so the registry host is unknown"
            raise UnusableBody(msg)
        return ImagePush(action=action, repository="", kind=kind)
    ref = parse_image(resource.resource_url)
    # A push by digest only repeats the digest as the tag.
    tag = resource.tag if resource.tag and not resource.tag.startswith("sha256:") else None
    return ImagePush(
        action=action,
        repository=ref.repository,
        tag=tag,
        digest=resource.digest or ref.digest,
        pushed_at=pushed_at,
        kind=kind,
    )


def _parse(payload: Any, headers: Headers) -> Parsed:
    if "specversion" in payload:
        event = convert(payload, _CloudEvent, "Harbor CloudEvents")
        kind, data, event_id, pushed_at = event.type, event.data, event.id, None
    else:
        default = convert(payload, _Default, "Harbor")
        kind, data, event_id = default.type, default.event_data, None
        pushed_at = None if default.occur_at is None else str(default.occur_at)
    if not data.resources:
        if _ACTIONS.get(kind) == "push":
            msg = "Harbor push event lists no resources (no tag or digest to deploy)"
            raise UnusableBody(msg)
        return Parsed(source="harbor", event_id=event_id, note=f"Harbor {kind} event")
    return Parsed(
        source="harbor",
        pushes=tuple(_push(kind, r, pushed_at) for r in data.resources),
        event_id=event_id,
    )


HARBOR = SourceFormat(name="harbor", label="Harbor", detect=_detect, parse=_parse)
