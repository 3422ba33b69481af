"""JFrog Artifactory webhooks of the ``docker`` domain (``pushed``, ``deleted``, ``promoted``).

https://jfrog.com/help/r/jfrog-platform-administration-documentation/domain-docker
Artifactory names the repository by its key and the image inside it, and the platform
by ``jpd_origin``; how a client addresses it depends on the Docker access method:
``<host>/<repo key>/<image>`` (repository path, the default) or
``<repo key>.<host>/<image>`` (subdomain). A trigger's ``--image`` may use either.
A webhook with a secret signs the body: ``X-JFrog-Event-Auth`` is the hex HMAC-SHA256
(``--signature jfrog``); custom headers can carry ``Authorization: Bearer <secret>``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

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

__all__ = ["JFROG"]

_ACTIONS: dict[str, PushAction] = {"pushed": "push", "deleted": "delete"}


class _Data(msgspec.Struct, frozen=True):
    repo_key: str
    image_name: str
    tag: str | None = None
    sha256: str | None = None
    path: str | None = None


class _Event(msgspec.Struct, frozen=True):
    domain: str
    event_type: str
    data: dict[str, Any]
    jpd_origin: str | None = None


def _detect(payload: Any, headers: Headers, content_type: str) -> bool:
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("domain"), str)
        and isinstance(payload.get("event_type"), str)
        and isinstance(payload.get("data"), dict)
    )


def _parse(payload: Any, headers: Headers) -> Parsed:
    event = convert(payload, _Event, "JFrog Artifactory")
    if event.domain != "docker":
        return Parsed(
            source="jfrog",
            note=f"JFrog {event.domain[:40]} {event.event_type[:40]} event: only the docker domain deploys",
        )
    data = convert(event.data, _Data, "JFrog Artifactory docker")
    host = urlsplit(event.jpd_origin or "").netloc.lower()
    if not host:
        msg = "JFrog docker event without jpd_origin: the registry host is unknown"
        raise UnusableBody(msg)
    key, name = data.repo_key.lower(), data.image_name.lower().strip("/")
    push = ImagePush(
        action=_ACTIONS.get(event.event_type, "other"),
        repository=f"{host}/{key}/{name}",
        aliases=(f"{key}.{host}/{name}",),
        tag=data.tag or None,
        digest=f"sha256:{data.sha256}" if data.sha256 else None,
        kind=f"docker {event.event_type}",
    )
    return Parsed(source="jfrog", pushes=(push,))


JFROG = SourceFormat(name="jfrog", label="JFrog Artifactory", detect=_detect, parse=_parse)
