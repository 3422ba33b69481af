"""Docker Hub repository webhooks (https://docs.docker.com/docker-hub/repos/manage/webhooks/).

Docker Hub sends a push only, with no event type, no digest and no signature: the
trigger's secret (in the URL) is all that authenticates it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.sources._event import Headers, ImagePush, Parsed, SourceFormat, convert
from shared.images import normalize_repository

__all__ = ["DOCKER_HUB"]


class _PushData(msgspec.Struct, frozen=True):
    tag: str
    pusher: str | None = None
    pushed_at: float | None = None


class _Repository(msgspec.Struct, frozen=True):
    repo_name: str


class _Payload(msgspec.Struct, frozen=True):
    push_data: _PushData
    repository: _Repository


def _detect(payload: Any, headers: Headers, content_type: str) -> bool:
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("push_data"), dict)
        and isinstance(payload.get("repository"), dict)
        and "repo_name" in payload["repository"]
    )


def _parse(payload: Any, headers: Headers) -> Parsed:
    body = convert(payload, _Payload, "Docker Hub")
    pushed_at = body.push_data.pushed_at
    return Parsed(
        source="dockerhub",
        pushes=(
            ImagePush(
                action="push",
                repository=normalize_repository(body.repository.repo_name),
                tag=body.push_data.tag or None,
                pushed_at=None if pushed_at is None else f"{pushed_at:.0f}",
            ),
        ),
    )


DOCKER_HUB = SourceFormat(name="dockerhub", label="Docker Hub", detect=_detect, parse=_parse)
