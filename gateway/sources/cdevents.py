"""CDEvents ``artifact.published`` / ``artifact.packaged``, the CNCF standard for CI/CD
events, as CloudEvents in structured mode (the CDEvent is ``data``) or binary mode (the
CDEvent is the body, the CloudEvent attributes are ``ce-*`` headers).

https://cdevents.dev/docs/ (spec: https://github.com/cdevents/spec), sent for instance by
Harbor's "CDEvents" webhook format. The artifact is a package URL,
``pkg:oci/<name>@sha256:...?repository_url=<registry>/<path>&tag=<tag>``. The sender's
own headers carry ``Authorization: Bearer <trigger secret>``; CDEvents define no signature.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from packageurl import PackageURL

from gateway.sources._event import (
    Headers,
    ImagePush,
    Parsed,
    SourceFormat,
    UnusableBody,
    convert,
)
from shared.images import parse_image

__all__ = ["CDEVENTS"]

_PREFIX = "dev.cdevents."
# dev.cdevents.<subject>.<predicate>.<version>
_TYPE = re.compile(r"^dev\.cdevents\.(?P<subject>[a-z]+)\.(?P<predicate>[a-z]+)\.")
_PUBLISHED = frozenset({("artifact", "published"), ("artifact", "packaged")})


class _Context(msgspec.Struct, frozen=True):
    type: str
    id: str | None = None
    timestamp: str | None = None


class _Subject(msgspec.Struct, frozen=True):
    id: str


class _CDEvent(msgspec.Struct, frozen=True):
    context: _Context
    subject: _Subject


def _event_type(payload: Any, headers: Headers) -> str | None:
    if not isinstance(payload, dict):
        return None
    for candidate in (
        payload.get("type") if "specversion" in payload else None,  # structured
        headers.get("ce-type") if headers.get("ce-specversion") else None,  # binary
        (payload.get("context") or {}).get("type")
        if isinstance(payload.get("context"), dict)
        else None,  # a bare CDEvent
    ):
        if isinstance(candidate, str) and candidate.startswith(_PREFIX):
            return candidate
    return None


def _detect(payload: Any, headers: Headers, content_type: str) -> bool:
    return _event_type(payload, headers) is not None


def _package(purl: str) -> PackageURL:
    try:
        return PackageURL.from_string(purl)
    except ValueError:
        msg = f"subject.id {purl[:120]!r} is not a package URL"
        raise UnusableBody(msg) from None


def _artifact(package: PackageURL) -> ImagePush:
    qualifiers = package.qualifiers if isinstance(package.qualifiers, dict) else {}
    # repository_url is the repository (registry/path); Harbor appends :tag@digest to it.
    location = parse_image(qualifiers.get("repository_url") or package.name)
    return ImagePush(
        action="push",
        repository=location.repository.lower(),
        tag=qualifiers.get("tag") or location.tag,
        digest=package.version or location.digest,
        kind="artifact published",
    )


def _parse(payload: Any, headers: Headers) -> Parsed:
    kind = _event_type(payload, headers) or ""
    body = payload.get("data") if "specversion" in payload else payload
    event = convert(body, _CDEvent, "CDEvents")
    event_id = (
        payload.get("id") if "specversion" in payload else headers.get("ce-id")
    ) or event.context.id
    match = _TYPE.match(event.context.type) or _TYPE.match(kind)
    if match is None or (match["subject"], match["predicate"]) not in _PUBLISHED:
        return Parsed(
            source="cdevents",
            event_id=event_id,
            note=f"CDEvents {kind[:80]}: only artifact.published and artifact.packaged deploy",
        )
    package = _package(event.subject.id)
    if package.type != "oci":
        return Parsed(
            source="cdevents",
            event_id=event_id,
            note=f"CDEvents artifact pkg:{package.type[:20]}/{package.name[:60]} is not an OCI image",
        )
    return Parsed(source="cdevents", pushes=(_artifact(package),), event_id=event_id)


CDEVENTS = SourceFormat(name="cdevents", label="CDEvents", detect=_detect, parse=_parse)
