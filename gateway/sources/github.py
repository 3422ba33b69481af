"""GitHub Packages: ``package`` and ``registry_package`` webhook events for ghcr.io images.

https://docs.github.com/webhooks/webhook-events-and-payloads#registry_package
GitHub signs every delivery with ``X-Hub-Signature-256`` when the webhook has a secret
and numbers it with ``X-GitHub-Delivery``, which the gateway uses against replays.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.sources._event import Headers, ImagePush, Parsed, SourceFormat, convert
from shared.images import parse_image

__all__ = ["GITHUB"]

_PACKAGE_EVENTS = ("registry_package", "package")
_CONTAINER_KINDS = frozenset({"docker", "container"})


class _Tag(msgspec.Struct, frozen=True):
    name: str | None = None
    digest: str | None = None


class _Manifest(msgspec.Struct, frozen=True):
    digest: str | None = None


class _ContainerMetadata(msgspec.Struct, frozen=True):
    tag: _Tag | None = None
    manifest: _Manifest | None = None


class _Version(msgspec.Struct, frozen=True):
    package_url: str | None = None
    container_metadata: _ContainerMetadata | None = None


class _Registry(msgspec.Struct, frozen=True):
    type: str | None = None


class _Owner(msgspec.Struct, frozen=True):
    login: str


class _Package(msgspec.Struct, frozen=True):
    name: str
    owner: _Owner
    package_version: _Version
    ecosystem: str | None = None
    package_type: str | None = None
    registry: _Registry | None = None


class _Event(msgspec.Struct, frozen=True):
    action: str


def _event_name(payload: Any, headers: Headers) -> str | None:
    named = headers.get("X-GitHub-Event")
    if named:
        return named
    if isinstance(payload, dict):
        for key in _PACKAGE_EVENTS:
            if isinstance(payload.get(key), dict) and "package_version" in payload[key]:
                return key
    return None


def _detect(payload: Any, headers: Headers, content_type: str) -> bool:
    return _event_name(payload, headers) is not None


def _is_container(package: _Package) -> bool:
    kinds = {
        (package.ecosystem or "").lower(),
        (package.package_type or "").lower(),
        ((package.registry.type if package.registry else None) or "").lower(),
    }
    return bool(kinds & _CONTAINER_KINDS)


def _parse(payload: Any, headers: Headers) -> Parsed:
    event = _event_name(payload, headers) or "unknown"
    delivery = headers.get("X-GitHub-Delivery") or None
    if event == "ping":
        return Parsed(source="github", event_id=delivery, note="GitHub ping: the webhook works")
    if event not in _PACKAGE_EVENTS:
        return Parsed(
            source="github",
            event_id=delivery,
            note=f"GitHub {event[:40]} events do not deploy; subscribe the webhook to packages",
        )
    action = convert(payload, _Event, "GitHub").action
    package = convert(payload.get(event), _Package, f"GitHub {event}")
    if not _is_container(package):
        return Parsed(source="github", event_id=delivery, note="not a container image package")
    version = package.package_version
    metadata = version.container_metadata or _ContainerMetadata()
    tag = metadata.tag or _Tag()
    repository = f"ghcr.io/{package.owner.login}/{package.name}"
    if version.package_url:
        repository = parse_image(version.package_url.rstrip(":")).repository
    push = ImagePush(
        action="push" if action in ("published", "updated") else "other",
        # ghcr.io names are lower case whatever case the owner's login has.
        repository=repository.lower(),
        tag=tag.name or None,
        digest=tag.digest or (metadata.manifest.digest if metadata.manifest else None),
        kind=f"{event}.{action}",
    )
    return Parsed(source="github", pushes=(push,), event_id=delivery)


GITHUB = SourceFormat(name="github", label="GitHub Packages", detect=_detect, parse=_parse)
