"""What every parser returns: image pushes or an alert, typed; and the two refusals."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import msgspec

from shared.errors import PermanentError

__all__ = [
    "Alert",
    "Headers",
    "ImagePush",
    "Parsed",
    "PushAction",
    "SourceFormat",
    "UnrecognisedBody",
    "UnusableBody",
    "bounded",
    "convert",
]

T = TypeVar("T")
Headers = Mapping[str, str]
PushAction = Literal["push", "pull", "delete", "other"]


class UnrecognisedBody(PermanentError, ValueError):
    """The body is in no format the gateway knows (422)."""


class UnusableBody(PermanentError, ValueError):
    """The body is in a known format but lacks what a command needs (422)."""


class ImagePush(msgspec.Struct, frozen=True, kw_only=True):
    """One registry event about one image; only ``action == "push"`` can deploy.

    `repository` includes the registry host (``ghcr.io/acme/api``); Docker Hub
    repositories are canonical (``docker.io/library/nginx``).
    """

    action: PushAction
    repository: str
    tag: str | None = None
    digest: str | None = None
    # What tells two pushes of one tag apart when the sender gives no digest.
    pushed_at: str | None = None
    kind: str | None = None  # the sender's own name for the event, for messages
    # Other spellings of the same repository a trigger's --image may use (JFrog's
    # subdomain access method beside its repository path).
    aliases: tuple[str, ...] = ()
    # False when the sender names the repository path but not the registry host (Nexus):
    # --image must then say the host, and matches on the path alone.
    host_known: bool = True


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """One alert notification (a group of alerts, as Alertmanager sends them)."""

    status: Literal["firing", "resolved"]
    key: str  # group key, or the sorted fingerprints: what makes a re-send "the same"
    name: str | None = None
    fingerprints: tuple[str, ...] = ()
    count: int = 0


class Parsed(msgspec.Struct, frozen=True, kw_only=True):
    """A recognised body: its sender format and what it says.

    With neither pushes nor an alert, `note` says why there is nothing to act on
    (a GitHub ping, a layer-only registry notification).
    """

    source: str
    pushes: tuple[ImagePush, ...] = ()
    alert: Alert | None = None
    event_id: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class SourceFormat:
    """One sender's format: its `source=` name, a label for messages, detect and parse."""

    name: str
    label: str
    detect: Callable[[Any, Headers, str], bool]
    parse: Callable[[Any, Headers], Parsed]


def convert(payload: Any, kind: type[T], label: str) -> T:
    """Validate a decoded JSON body against a vendor's Struct; UnusableBody says where."""
    try:
        return msgspec.convert(payload, kind)
    except msgspec.ValidationError as exc:
        msg = f"not a usable {label} payload: {exc}"
        raise UnusableBody(msg) from None


# A tag as registries define it (the distribution spec's grammar): at most 128 characters.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# Longest sender-given text kept as it is; a longer one is cut (names) or hashed (keys).
_MAX_TEXT = 256
_MAX_FINGERPRINTS = 100


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= _MAX_TEXT else text[:_MAX_TEXT]


def _key(text: str) -> str:
    # A key only has to tell events apart: a long one is kept as its SHA-256.
    if len(text) <= _MAX_TEXT:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def bounded(parsed: Parsed) -> Parsed:
    """The event with every sender-given field bounded in size, so that neither memory nor
    the store grows with what a sender puts in a body; a tag outside the registry grammar
    is refused (UnusableBody)."""
    for push in parsed.pushes:
        if push.tag is not None and not _TAG.fullmatch(push.tag):
            msg = f"the tag {push.tag[:40]!r} is not a valid image tag (at most 128 of A-Z a-z 0-9 _ . -)"
            raise UnusableBody(msg)
        if len(push.repository) > _MAX_TEXT or len(push.digest or "") > _MAX_TEXT:
            msg = "the repository or digest is longer than any registry allows"
            raise UnusableBody(msg)
    pushes = tuple(
        msgspec.structs.replace(p, pushed_at=_cut(p.pushed_at), kind=_cut(p.kind))
        for p in parsed.pushes
    )
    alert = parsed.alert
    if alert is not None:
        alert = msgspec.structs.replace(
            alert,
            key=_key(alert.key),
            name=_cut(alert.name),
            fingerprints=tuple(_key(f) for f in alert.fingerprints[:_MAX_FINGERPRINTS]),
        )
    return msgspec.structs.replace(
        parsed,
        pushes=pushes,
        alert=alert,
        event_id=_key(parsed.event_id) if parsed.event_id is not None else None,
        note=_cut(parsed.note),
    )
