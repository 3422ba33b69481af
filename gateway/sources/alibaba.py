"""Alibaba Cloud Container Registry (ACR) webhooks.

https://www.alibabacloud.com/help/en/acr/user-guide/manage-webhooks
ACR sends no signature and no custom header: the trigger's secret in the URL (the
format this gateway's URLs keep from Alibaba's own triggers) authenticates it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.sources._event import Headers, ImagePush, Parsed, SourceFormat, convert

__all__ = ["ALIBABA"]


class _PushData(msgspec.Struct, frozen=True):
    tag: str
    digest: str | None = None
    pushed_at: str | None = None


class _Repository(msgspec.Struct, frozen=True):
    repo_full_name: str
    region: str


class _Payload(msgspec.Struct, frozen=True):
    push_data: _PushData
    repository: _Repository


def _detect(payload: Any, headers: Headers, content_type: str) -> bool:
    repository = payload.get("repository") if isinstance(payload, dict) else None
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("push_data"), dict)
        and isinstance(repository, dict)
        and "region" in repository
        and "repo_full_name" in repository
    )


def _parse(payload: Any, headers: Headers) -> Parsed:
    body = convert(payload, _Payload, "Alibaba Cloud Container Registry")
    repository = f"registry.{body.repository.region}.aliyuncs.com/{body.repository.repo_full_name}"
    return Parsed(
        source="alibaba",
        pushes=(
            ImagePush(
                action="push",
                repository=repository.lower(),
                tag=body.push_data.tag or None,
                digest=body.push_data.digest or None,
                pushed_at=body.push_data.pushed_at,
            ),
        ),
    )


ALIBABA = SourceFormat(
    name="alibaba", label="Alibaba Cloud Container Registry", detect=_detect, parse=_parse
)
