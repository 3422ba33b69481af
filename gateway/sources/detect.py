"""Recognise a body: an explicit ``source=`` wins, then headers and content type, then shape."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.sources._event import Headers, Parsed, SourceFormat, UnrecognisedBody, bounded
from gateway.sources.acr import ACR
from gateway.sources.alerts import ALERTMANAGER, GRAFANA
from gateway.sources.alibaba import ALIBABA
from gateway.sources.cdevents import CDEVENTS
from gateway.sources.distribution import DISTRIBUTION
from gateway.sources.dockerhub import DOCKER_HUB
from gateway.sources.generic import GENERIC
from gateway.sources.github import GITHUB
from gateway.sources.harbor import HARBOR
from gateway.sources.jfrog import JFROG
from gateway.sources.nexus import NEXUS
from gateway.sources.pubsub import PUBSUB
from gateway.sources.quay import QUAY

__all__ = ["SOURCES", "parse_event"]

# Order matters where shapes overlap: GitHub, distribution, CDEvents (binary mode) and
# Nexus are named by headers or content type first; Alibaba's body is Docker Hub's plus a
# region, so it is tried first; the generic body is the last resort.
SOURCES: dict[str, SourceFormat] = {
    s.name: s
    for s in (
        GITHUB,
        DISTRIBUTION,
        CDEVENTS,
        NEXUS,
        HARBOR,
        ACR,
        JFROG,
        PUBSUB,
        ALIBABA,
        DOCKER_HUB,
        QUAY,
        ALERTMANAGER,
        GRAFANA,
        GENERIC,
    )
}


def _decode(body: bytes, label: str, hint: str = "") -> Any:
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        msg = f"the body is not JSON (or is nested too deeply), so it cannot be a {label} payload{hint}"
        raise UnrecognisedBody(msg) from None


def parse_event(
    headers: Headers, content_type: str, body: bytes, source: str | None = None
) -> Parsed:
    """The push or alert a request body carries.

    Raises `UnrecognisedBody` when no known format matches (or `source` names none) and
    `UnusableBody` when the format is known but the body lacks what a command needs.
    """
    if source is not None:
        chosen = SOURCES.get(source)
        if chosen is None:
            msg = f"source must be one of {', '.join(SOURCES)} or plain, got {source[:32]!r}"
            raise UnrecognisedBody(msg)
        payload = _decode(body, chosen.label)
        if not chosen.detect(payload, headers, content_type):
            msg = f"the body does not look like a {chosen.label} payload (source={source})"
            raise UnrecognisedBody(msg)
        return bounded(chosen.parse(payload, headers))
    payload = _decode(
        body, "registry or alert", "; call with source=plain to run the trigger and ignore it"
    )
    for candidate in SOURCES.values():
        if candidate.detect(payload, headers, content_type):
            return bounded(candidate.parse(payload, headers))
    msg = (
        "the body is not a registry push or alert this gateway knows "
        f"({', '.join(SOURCES)}); name the sender with source=..., "
        "or call with source=plain to run the trigger and ignore the body"
    )
    raise UnrecognisedBody(msg)
