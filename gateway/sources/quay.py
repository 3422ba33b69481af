"""Quay repository push notifications (quay.io and Red Hat Quay).

https://docs.redhat.com/en/documentation/red_hat_quay/3/html/use_red_hat_quay/repository_notifications
Quay's webhook cannot sign or send a custom header: only the URL secret authenticates it.
It names the pushed tags but no digest, so tags are deployed by name.
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

__all__ = ["QUAY"]


class _Payload(msgspec.Struct, frozen=True):
    docker_url: str
    # A list of tag names; early Quay versions sent {tag: image id} instead.
    updated_tags: list[str] | dict[str, str]


def _detect(payload: Any, headers: Headers, content_type: str) -> bool:
    return isinstance(payload, dict) and "docker_url" in payload and "updated_tags" in payload


def _parse(payload: Any, headers: Headers) -> Parsed:
    body = convert(payload, _Payload, "Quay")
    tags = list(body.updated_tags)
    if not tags:
        msg = "Quay push lists no updated_tags: nothing to deploy"
        raise UnusableBody(msg)
    return Parsed(
        source="quay",
        pushes=tuple(
            ImagePush(action="push", repository=body.docker_url.lower(), tag=t) for t in tags
        ),
    )


QUAY = SourceFormat(name="quay", label="Quay", detect=_detect, parse=_parse)
