"""Registry credentials for Swarm service updates, from a Docker client config file.

``docker service update --with-registry-auth`` sends the credentials of the image's
registry in ``X-Registry-Auth``, so that the nodes can pull a private image. The Swarm
adapter does the same with the credentials of `TRIGGERS_DOCKER_CONFIG`, a file in the
format the Docker CLI writes (``~/.docker/config.json``): an ``auths`` map of registry
to ``auth`` (base64 of ``user:password``), ``username``/``password`` or ``identitytoken``.

Credential helpers (``credsStore``, ``credHelpers``) are not run: a registry that only a
helper knows gets a warning, once, and no header. The file is read at start (where any
problem stops the worker) and again whenever it changes; a rewrite that cannot be read
keeps the credentials read before, with a warning, so a rotation never fails a job.
Credentials never reach a log line, a repr or an error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from shared.errors import ConfigError
from shared.images import image_registry, registry_host

__all__ = ["AUTH_HEADER", "HUB_ADDRESS", "RegistryAuth"]

AUTH_HEADER = "X-Registry-Auth"
# The key `docker login` writes for Docker Hub.
HUB_ADDRESS = "https://index.docker.io/v1/"

log = structlog.get_logger("triggers.swarm")

# What identifies one version of the file: a rotation that renames a new file into place
# changes the inode even when the rewrite lands within the same mtime tick.
_Stamp = tuple[int, int, int, int]


@dataclass(frozen=True)
class _Credentials:
    """One ``auths`` entry; repr=False keeps the secrets out of any repr."""

    address: str
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    identitytoken: str = field(default="", repr=False)

    def header(self) -> str:
        """The value the Docker CLI sends: base64url of the AuthConfig JSON."""
        if self.identitytoken:
            body = {"serveraddress": self.address, "identitytoken": self.identitytoken}
        else:
            body = {
                "username": self.username,
                "password": self.password,
                "serveraddress": self.address,
            }
        encoded = json.dumps(body, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(encoded).decode("ascii")


@dataclass(frozen=True)
class _DockerConfig:
    """The parts of a config file that say where credentials come from."""

    auths: list[_Credentials]
    helpers: dict[str, str]
    store: str | None

    def credentials(self, registry: str) -> _Credentials | None:
        """The entry for `registry` (as `image_registry` names it): an exact key first."""
        exact = HUB_ADDRESS if registry == "docker.io" else registry
        found = [c for c in self.auths if registry_host(c.address) == registry]
        found.sort(key=lambda c: c.address != exact)
        return found[0] if found else None

    def helper(self, registry: str) -> str | None:
        """The credential helper the Docker CLI would ask for `registry`, if any."""
        return self.helpers.get(registry) or self.store


class RegistryAuth:
    """The ``X-Registry-Auth`` value for each image, from a Docker config file.

    Raises `ConfigError` when the file cannot be read or parsed at construction.
    """

    def __init__(self, path: str) -> None:
        self._path = Path(path).expanduser()
        try:
            self._stamp = _stamp(self._path)
        except OSError as exc:
            raise ConfigError(_unreadable(self._path, exc)) from None
        self._config = _load(self._path)
        self._unusable: _Stamp | None = None
        self._warned: set[str] = set()

    def header(self, image: str) -> str | None:
        """The header for the registry of `image`; None when the file has no entry for it."""
        self._refresh()
        registry = image_registry(image)
        found = self._config.credentials(registry)
        if found is not None:
            return found.header()
        helper = self._config.helper(registry)
        if helper is not None and registry not in self._warned:
            self._warned.add(registry)
            log.warning(
                "swarm.registry_auth_helper_unsupported",
                registry=registry,
                helper=helper,
                path=str(self._path),
                hint=(
                    "credential helpers are not run; updates of this registry's images "
                    "carry no credentials: put them in the file's auths (docker login "
                    "with a config that has no credsStore)"
                ),
            )
        return None

    def _refresh(self) -> None:
        """Read the file again when it changed; keep the last good credentials otherwise."""
        try:
            stamp = _stamp(self._path)
        except OSError as exc:
            self._keep((0, 0, 0, 0), _unreadable(self._path, exc))
            return
        if stamp == self._stamp:
            return
        try:
            config = _load(self._path)
        except ConfigError as exc:
            self._keep(stamp, str(exc))
            return
        self._config, self._stamp, self._unusable = config, stamp, None
        self._warned.clear()
        log.info("swarm.registry_auth_reloaded", path=str(self._path))

    def _keep(self, stamp: _Stamp, problem: str) -> None:
        if stamp != self._unusable:
            self._unusable = stamp
            log.warning(
                "swarm.registry_auth_unusable",
                path=str(self._path),
                error=problem,
                kept="the credentials read before",
            )


def _unreadable(path: Path, exc: OSError) -> str:
    return f"TRIGGERS_DOCKER_CONFIG: {path}: cannot read it: {exc.strerror}"


def _stamp(path: Path) -> _Stamp:
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def _load(path: Path) -> _DockerConfig:
    """Parse the file; a `ConfigError` names the file and the part that is wrong."""
    where = f"TRIGGERS_DOCKER_CONFIG: {path}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(_unreadable(path, exc)) from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        # The position only: the message of a JSON error never quotes the document.
        msg = f"{where} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise ConfigError(msg) from None
    except UnicodeDecodeError:
        msg = f"{where} is not JSON: not UTF-8 text"
        raise ConfigError(msg) from None
    if not isinstance(data, dict):
        msg = f"{where} must hold a JSON object (as ~/.docker/config.json)"
        raise ConfigError(msg)
    auths = _object(data, "auths", where)
    helpers = _object(data, "credHelpers", where)
    store = data.get("credsStore")
    if store is not None and not isinstance(store, str):
        msg = f"{where}: credsStore must be a string"
        raise ConfigError(msg)
    for registry, helper in helpers.items():
        if not isinstance(helper, str):
            msg = f"{where}: credHelpers[{registry!r}] must be a string"
            raise ConfigError(msg)
    entries = [_entry(address, value, where) for address, value in auths.items()]
    return _DockerConfig(
        auths=[e for e in entries if e is not None],
        helpers={registry_host(r): h for r, h in helpers.items()},
        store=store or None,
    )


def _object(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        msg = f"{where}: {key} must be an object"
        raise ConfigError(msg)
    return value


def _entry(address: str, value: Any, where: str) -> _Credentials | None:
    """One ``auths`` entry; None when it holds no credentials (a helper's placeholder)."""
    place = f"{where}: auths[{address!r}]"
    if not isinstance(value, dict):
        msg = f"{place} must be an object"
        raise ConfigError(msg)
    fields: dict[str, str] = {}
    for name in ("auth", "username", "password", "identitytoken"):
        given = value.get(name) or ""
        if not isinstance(given, str):
            msg = f"{place}.{name} must be a string"
            raise ConfigError(msg)
        fields[name] = given
    if fields["auth"]:
        # As the Docker CLI: `auth` wins over username/password written beside it.
        fields["username"], fields["password"] = _user_password(fields["auth"], place)
    if not (fields["username"] or fields["password"] or fields["identitytoken"]):
        return None
    return _Credentials(
        address=address,
        username=fields["username"],
        password=fields["password"],
        identitytoken=fields["identitytoken"],
    )


def _user_password(auth: str, place: str) -> tuple[str, str]:
    msg = f"{place}.auth must be base64 of user:password"
    try:
        decoded = base64.b64decode(auth + "=" * (-len(auth) % 4), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ConfigError(msg) from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise ConfigError(msg)
    return user, password
