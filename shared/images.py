"""Image references: split, normalise and compare them the way Docker does.

``nginx``, ``library/nginx``, ``docker.io/library/nginx`` and
``index.docker.io/library/nginx:1.27`` all name one repository; a registry push must
match a service whatever spelling each side uses, or the wrong services get upgraded.
"""

from __future__ import annotations

import re

import msgspec

__all__ = [
    "ImageRef",
    "familiar_repository",
    "image_reference",
    "image_registry",
    "normalize_repository",
    "parse_image",
    "registry_host",
    "same_repository",
]

_DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# A digest as the OCI spec defines it: algorithm ":" encoded.
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


class ImageRef(msgspec.Struct, frozen=True, kw_only=True):
    """An image reference split into its parts; `repository` as it was written."""

    repository: str
    tag: str | None = None
    digest: str | None = None


def parse_image(reference: str) -> ImageRef:
    """Split ``[registry/]name[:tag][@digest]``."""
    name, _, digest = reference.strip().partition("@")
    tag: str | None = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return ImageRef(repository=name, tag=tag or None, digest=digest or None)


def normalize_repository(repository: str) -> str:
    """The canonical ``registry/path`` of a repository (tag and digest dropped).

    A first component without a dot or a colon (and not ``localhost``) is a Docker Hub
    namespace, and a Docker Hub name without a namespace is an official ``library/`` image.
    Registry hosts are case-insensitive; paths are lower-cased too, as registries require.
    """
    name = parse_image(repository).repository.lower()
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = _DOCKER_HUB, name
    if host in _DOCKER_HUB_ALIASES:
        host = _DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    return f"{host}/{path}"


def image_registry(reference: str) -> str:
    """The registry host[:port] an image is pulled from; ``docker.io`` for Docker Hub."""
    return normalize_repository(reference).partition("/")[0]


def registry_host(address: str) -> str:
    """The host[:port] of a registry address as credential stores write it.

    ``https://index.docker.io/v1/``, ``docker.io`` and ``index.docker.io`` all give
    ``docker.io``; ``https://registry.example.com/v2/`` gives ``registry.example.com``.
    """
    host = address.strip().lower().removeprefix("https://").removeprefix("http://")
    host = host.partition("/")[0]
    return _DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def familiar_repository(repository: str) -> str:
    """The short form Docker prints: ``nginx`` for ``docker.io/library/nginx``."""
    canonical = normalize_repository(repository)
    if canonical.startswith(f"{_DOCKER_HUB}/library/"):
        return canonical.removeprefix(f"{_DOCKER_HUB}/library/")
    if canonical.startswith(f"{_DOCKER_HUB}/"):
        return canonical.removeprefix(f"{_DOCKER_HUB}/")
    return canonical


def same_repository(a: str, b: str) -> bool:
    """Whether two image references name the same repository."""
    return normalize_repository(a) == normalize_repository(b)


def image_reference(repository: str, tag: str | None, digest: str | None) -> str:
    """``repo:tag@digest``, ``repo@digest`` or ``repo:tag``.

    With a digest the reference pins the exact image, so a push that reuses a tag still
    rolls the service; the tag stays in the reference for people reading it.
    """
    ref = repository
    if tag:
        ref += f":{tag}"
    if digest:
        if not _DIGEST.fullmatch(digest):
            msg = f"{digest[:80]!r} is not an image digest (algorithm:hex)"
            raise ValueError(msg)
        ref += f"@{digest}"
    return ref
