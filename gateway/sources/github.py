"""GitHub Packages: ``package`` and ``registry_package`` webhook events for ghcr.io images.

https://docs.github.com/webhooks/webhook-events-and-payloads#registry_package
GitHub signs every delivery with ``X-Hub-Signature-256`` when the webhook has a secret
and numbers it with ``X-GitHub-Delivery``, which the gateway uses against replays.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.sources._event import (
    Headers,
    ImagePush,
    Parsed,
    SourceFormat,
    UnusableBody,
    convert,
)
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
    version: str | None = None
    name: str | None = None
    package_url: str | None = None
    container_metadata: _ContainerMetadata | None = None


class _Registry(msgspec.Struct, frozen=True):
    type: str | None = None
    url: str | None = None


class _Owner(msgspec.Struct, frozen=True):
    login: str


class _Package(msgspec.Struct, frozen=True):
    name: str
    package_version: _Version
    # Every one of these has been absent from some delivery GitHub sent.
    owner: _Owner | None = None
    namespace: str | None = None
    ecosystem: str | None = None
    package_type: str | None = None
    registry: _Registry | None = None


class _Event(msgspec.Struct, frozen=True):
    action: str
    # Fallbacks for the package's owner when the package object omits it.
    organization: _Owner | None = None
    repository: dict[str, Any] | None = None


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


def _owner(package: _Package, event: _Event) -> str | None:
    if package.owner is not None:
        return package.owner.login
    if package.namespace:
        return package.namespace.split("/")[0]
    if event.organization is not None:
        return event.organization.login
    owner = (event.repository or {}).get("owner")
    login = owner.get("login") if isinstance(owner, dict) else None
    return login if isinstance(login, str) else None


def _reference(package: _Package, event: _Event) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of the package version, from whichever fields are there.

    ghcr.io sends the tag in ``container_metadata.tag.name`` (empty for an untagged
    manifest) and the digest as ``version``; the older Docker registry of GitHub Packages
    sent the tag as ``version`` and no container metadata.
    """
    version = package.package_version
    metadata = version.container_metadata or _ContainerMetadata()
    tag = (metadata.tag or _Tag()).name or None
    digest = (metadata.tag or _Tag()).digest or (
        metadata.manifest.digest if metadata.manifest else None
    )
    for candidate in (version.version, version.name):
        if not candidate:
            continue
        if candidate.startswith("sha256:"):
            digest = digest or candidate
        elif tag is None and metadata.tag is None:
            tag = candidate
    repository = None
    if version.package_url:
        repository = parse_image(version.package_url.rstrip(":")).repository
    else:
        owner = _owner(package, event)
        if owner is None:
            msg = "GitHub package event names no owner (package.owner, namespace, organization)"
            raise UnusableBody(msg)
        repository = f"ghcr.io/{owner}/{package.name}"
    # ghcr.io names are lower case whatever case the owner's login has.
    return repository.lower(), tag, digest


def _parse(payload: Any, headers: Headers) -> Parsed:
    event_name = _event_name(payload, headers) or "unknown"
    delivery = headers.get("X-GitHub-Delivery") or None
    if event_name == "ping":
        return Parsed(source="github", event_id=delivery, note="GitHub ping: the webhook works")
    if event_name not in _PACKAGE_EVENTS:
        return Parsed(
            source="github",
            event_id=delivery,
            note=f"GitHub {event_name[:40]} events do not deploy; subscribe the webhook to packages",
        )
    event = convert(payload, _Event, "GitHub")
    package = convert(payload.get(event_name), _Package, f"GitHub {event_name}")
    if not _is_container(package):
        return Parsed(source="github", event_id=delivery, note="not a container image package")
    repository, tag, digest = _reference(package, event)
    push = ImagePush(
        action="push" if event.action in ("published", "updated") else "other",
        repository=repository,
        tag=tag,
        digest=digest,
        kind=f"{event_name}.{event.action}",
    )
    return Parsed(source="github", pushes=(push,), event_id=delivery)


GITHUB = SourceFormat(name="github", label="GitHub Packages", detect=_detect, parse=_parse)
