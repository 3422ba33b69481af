"""Sonatype Nexus Repository webhooks (``rm:repository:component`` and ``:asset``) of a
Docker repository.

https://help.sonatype.com/en/webhooks.html
Nexus signs every delivery when the webhook capability has a secret key:
``X-Nexus-Webhook-Signature`` is the hex HMAC-SHA1 of the body (``--signature nexus``),
and numbers it with ``X-Nexus-Webhook-Delivery``. It names the repository path but not
the host clients pull from (a connector port or a proxy in front), so a trigger takes
Nexus pushes only with ``--image HOST/PATH``.
"""

from __future__ import annotations

import re
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

__all__ = ["NEXUS"]

_ACTIONS: dict[str, PushAction] = {"CREATED": "push", "UPDATED": "push", "DELETED": "delete"}
# A Docker asset is a manifest ("v2/<name>/manifests/<tag or digest>") or a blob.
_MANIFEST = re.compile(r"^/?v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")


class _Item(msgspec.Struct, frozen=True):
    name: str
    format: str | None = None
    version: str | None = None


class _Event(msgspec.Struct, frozen=True, rename="camel"):
    action: str
    repository_name: str | None = None
    timestamp: str | None = None
    component: _Item | None = None
    asset: _Item | None = None


def _detect(payload: Any, headers: Headers, content_type: str) -> bool:
    if headers.get("X-Nexus-Webhook-Id", "").startswith("rm:repository:"):
        return True
    return (
        isinstance(payload, dict)
        and "repositoryName" in payload
        and "action" in payload
        and ("component" in payload or "asset" in payload)
    )


def _push(event: _Event) -> ImagePush | None:
    action = _ACTIONS.get(event.action, "other")
    kind = f"{'component' if event.component else 'asset'} {event.action.lower()}"
    if event.component is not None:
        return ImagePush(
            action=action,
            repository=event.component.name.lower(),
            tag=event.component.version or None,
            pushed_at=event.timestamp,
            kind=kind,
            host_known=False,
        )
    assert event.asset is not None  # noqa: S101 - the caller checked one is present
    manifest = _MANIFEST.match(event.asset.name)
    if manifest is None:
        return None  # a layer blob: the manifest's own event names the image
    reference = manifest.group("reference")
    digest = reference if ":" in reference else None
    return ImagePush(
        action=action,
        repository=manifest.group("name").lower(),
        tag=None if digest else reference,
        digest=digest,
        pushed_at=event.timestamp,
        kind=kind,
        host_known=False,
    )


def _parse(payload: Any, headers: Headers) -> Parsed:
    event = convert(payload, _Event, "Nexus Repository")
    delivery = headers.get("X-Nexus-Webhook-Delivery") or None
    item = event.component or event.asset
    if item is None:
        return Parsed(source="nexus", event_id=delivery, note="Nexus event without a component")
    if (item.format or "docker") != "docker":
        return Parsed(
            source="nexus",
            event_id=delivery,
            note=f"Nexus {item.format[:40] if item.format else ''} component: only Docker repositories deploy",
        )
    push = _push(event)
    if push is None:
        return Parsed(source="nexus", event_id=delivery, note="Nexus Docker layer (blob) event")
    return Parsed(source="nexus", pushes=(push,), event_id=delivery)


NEXUS = SourceFormat(name="nexus", label="Sonatype Nexus", detect=_detect, parse=_parse)
