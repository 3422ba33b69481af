"""The documented generic body for home-grown pipelines:
``{"image": "registry/repo", "tag": "1.4.2", "digest": "sha256:..."}``.

``image`` may also be a full reference (``registry/repo:1.4.2@sha256:...``); ``id``, if
given, identifies the delivery so a retry acts once. Nothing else is accepted, so a body
of some other tool is never mistaken for this one. Authenticate it like any call: the
secret in a header, and ``--signature hmac|timestamped`` to sign it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.sources._event import Headers, ImagePush, Parsed, SourceFormat, UnusableBody
from shared.images import parse_image

__all__ = ["GENERIC"]

_FIELDS = frozenset({"image", "tag", "digest", "id"})


class _Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    image: str
    tag: str | None = None
    digest: str | None = None
    id: str | None = None


def _detect(payload: Any, headers: Headers, content_type: str) -> bool:
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("image"), str)
        and set(payload) <= _FIELDS
    )


def _parse(payload: Any, headers: Headers) -> Parsed:
    try:
        body = msgspec.convert(payload, _Body)
    except msgspec.ValidationError as exc:
        msg = f"not a usable generic push ({{image, tag, digest, id}}): {exc}"
        raise UnusableBody(msg) from None
    reference = parse_image(body.image)
    if not reference.repository:
        msg = "image is empty: give the repository, e.g. registry.example.com/team/api"
        raise UnusableBody(msg)
    push = ImagePush(
        action="push",
        repository=reference.repository,
        tag=body.tag or reference.tag,
        digest=body.digest or reference.digest,
        kind="push",
    )
    return Parsed(source="generic", pushes=(push,), event_id=body.id)


GENERIC = SourceFormat(name="generic", label="generic push", detect=_detect, parse=_parse)
