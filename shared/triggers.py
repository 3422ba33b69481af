"""Triggers and their URLs, in the managed container service's format.

A trigger URL is ``/hook/trigger?triggerUrl=<base64 of "cluster|app|action|id|">&secret=<hex>``
where action is ``redeploy`` or ``scaling``. The secret is shown once, at creation; the
store keeps only its SHA-256 (the secret is 256 random bits, so a slow hash adds nothing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import Literal
from urllib.parse import quote

import msgspec
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from shared.errors import PermanentError
from shared.messages import Action

__all__ = [
    "HTTP_METHODS",
    "MIN_SIGNING_SECRET",
    "NAMESPACE_PATTERN",
    "NAME_PATTERN",
    "SignatureScheme",
    "Trigger",
    "TriggerOptions",
    "TriggerRef",
    "TriggerState",
    "TriggerUrlError",
    "decode_trigger_url",
    "encode_trigger_url",
    "hash_secret",
    "new_secret",
    "new_trigger_id",
    "secret_matches",
    "trigger_call_url",
    "validate_name",
    "validate_namespace",
]

# Cluster, application and service names: what Kubernetes and Swarm accept, minus the
# separators the trigger URL and the routing keys use ("|", ".", "/", whitespace).
# A shorter HMAC key could be guessed from one signed request offline.
MIN_SIGNING_SECRET = 16
NAME_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")
_TRIGGER_ID = re.compile(r"^[a-z0-9]{8,64}$")  # ours are 26 base32 chars
_SECRET = re.compile(r"^[0-9a-f]{64}$")

UrlAction = Literal["redeploy", "scaling"]
_URL_ACTION: dict[Action, UrlAction] = {"redeploy": "redeploy", "scale": "scaling"}
_ACTION: dict[str, Action] = {"redeploy": "redeploy", "scaling": "scale"}


# The methods a trigger may be called with; a trigger can be limited to a subset.
HTTP_METHODS: tuple[str, ...] = ("GET", "POST")
TriggerState = Literal["active", "disabled", "expired", "revoked"]


class TriggerUrlError(PermanentError, ValueError):
    """`triggerUrl` is not base64 of ``cluster|app|action|id|``; the message says how."""


SignatureScheme = Literal["github", "hmac", "timestamped", "jfrog", "nexus", "google-oidc"]


class TriggerOptions(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How a trigger reacts to registry pushes and alerts, and how callers authenticate.

    Stored as one JSON column, so a new option needs no schema change.
    """

    # Image update: the repository the trigger is bound to, and which tags deploy.
    image: str | None = None
    tags: str | None = None
    semver: str | None = None
    # Alerts: the scaling step when the call gives none, scale in when an alert resolves,
    # and how long one alert (group) acts only once.
    step: int | None = None
    scale_in_on_resolve: bool = False
    cooldown: float | None = None
    # Authentication beyond the secret. The HMAC key must be kept in clear to verify
    # signatures; it is shown once, like the secret, and never printed again.
    signature: SignatureScheme | None = None
    signing_secret: str | None = None
    header_secret_only: bool = False
    # google-oidc: the audience the push subscription's token must name, and optionally
    # the service account it must be issued for.
    oidc_audience: str | None = None
    oidc_email: str | None = None

    def check(self, action: Action, image_update: bool) -> None:
        """Raise ValueError, saying which option to fix, when the options do not fit."""
        if (self.image or self.tags or self.semver) and not (action == "redeploy" and image_update):
            msg = "--image, --tags and --semver apply to redeploy triggers with --image-update"
            raise ValueError(msg)
        if self.tags and self.semver:
            msg = "give --tags or --semver, not both"
            raise ValueError(msg)
        if self.semver:
            try:
                SpecifierSet(self.semver)
            except (InvalidSpecifier, ValueError):  # ValueError: past int()'s digit limit
                msg = f"--semver {self.semver!r} is not a version range; write e.g. '>=1.2,<2'"
                raise ValueError(msg) from None
        if (self.step is not None or self.scale_in_on_resolve) and action != "scale":
            msg = "--step and --scale-in-on-resolve apply to scale triggers only"
            raise ValueError(msg)
        if self.step is not None and not 1 <= self.step <= 100:
            msg = "--step must be a whole number from 1 to 100"
            raise ValueError(msg)
        if self.cooldown is not None and not 0 <= self.cooldown <= 86_400:
            msg = "--cooldown must be from 0 to 86400 seconds"
            raise ValueError(msg)
        if self.signing_secret is not None and self.signature in (None, "google-oidc"):
            msg = "--signing-secret needs --signature github|hmac|timestamped|jfrog|nexus"
            raise ValueError(msg)
        if self.signature == "google-oidc":
            if not self.oidc_audience:
                msg = "--signature google-oidc needs --oidc-audience (the push subscription's audience)"
                raise ValueError(msg)
        elif self.signature is not None and not self.signing_secret:
            msg = "a signature scheme needs a signing secret"
            raise ValueError(msg)
        if (self.oidc_audience or self.oidc_email) and self.signature != "google-oidc":
            msg = "--oidc-audience and --oidc-email need --signature google-oidc"
            raise ValueError(msg)
        _check_signing_secret(self.signing_secret)


def _check_signing_secret(secret: str | None) -> None:
    if secret is not None and len(secret) < MIN_SIGNING_SECRET:
        msg = (
            f"--signing-secret must be at least {MIN_SIGNING_SECRET} characters "
            "(leave it out and one is generated)"
        )
        raise ValueError(msg)


class Trigger(msgspec.Struct, frozen=True, kw_only=True):
    """A stored trigger with its policy. Only hashes of secrets are kept.

    After a rotation the previous secret's hash is kept until
    `previous_secret_expires_at`, so callers can be switched over without a gap.
    """

    id: str
    cluster: str
    app: str
    action: Action
    service: str | None = None
    image_update: bool = False
    # Kubernetes only: the namespace of the application; None means the context's.
    namespace: str | None = None
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None = None
    options: TriggerOptions = TriggerOptions()
    # Policy (migration 4). None means "no limit".
    enabled: bool = True
    expires_at: datetime | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    cooldown: int | None = None
    rate_limit: int | None = None
    allowed_methods: tuple[str, ...] = HTTP_METHODS
    # Rotation (migration 4).
    previous_secret_hash: str | None = None
    previous_secret_expires_at: datetime | None = None
    rotated_at: datetime | None = None
    updated_at: datetime | None = None
    # Notifications and approvals (migration 17): the sinks every result of this trigger
    # goes to, and how many people must approve a call (None: none) within how long.
    notify: tuple[str, ...] = ()
    approvals: int | None = None
    approval_timeout: int | None = None
    # Migration 24: X-Request-ID serves as the Idempotency-Key when a call sends none.
    request_id_idempotency: bool = False

    @property
    def revoked(self) -> bool:
        """A revoked trigger answers 403 like an unknown one."""
        return self.revoked_at is not None

    def state(self, now: datetime) -> TriggerState:
        """What a call would find: revoked wins over disabled, disabled over expired."""
        if self.revoked:
            return "revoked"
        if not self.enabled:
            return "disabled"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def accepts_secret(self, secret: str, now: datetime) -> bool:
        """The current secret, or the previous one while its grace period lasts.

        Both hashes are always compared, so the time taken says nothing about which matched.
        """
        current = secret_matches(secret, self.secret_hash)
        previous = (
            self.previous_secret_hash is not None
            and self.previous_secret_expires_at is not None
            and now < self.previous_secret_expires_at
        )
        old = secret_matches(secret, self.previous_secret_hash or "")
        return current or (previous and old)


class TriggerRef(msgspec.Struct, frozen=True, kw_only=True):
    """What a `triggerUrl` parameter says: it must match the stored trigger exactly."""

    cluster: str
    app: str
    action: Action
    trigger_id: str


def validate_name(kind: str, value: str) -> str:
    """Return `value` if it is a usable cluster/app/service name, else raise ValueError."""
    if not NAME_PATTERN.fullmatch(value):
        msg = (
            f"{kind} {value!r} is not a valid name: use 1-63 letters, digits, '-' or '_', "
            "starting and ending with a letter or digit"
        )
        raise ValueError(msg)
    return value


NAMESPACE_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def validate_namespace(value: str) -> str:
    """Return `value` if it is a valid Kubernetes namespace name, else raise ValueError."""
    if not NAMESPACE_PATTERN.fullmatch(value):
        msg = (
            f"namespace {value!r} is not a valid Kubernetes namespace: use 1-63 lowercase "
            "letters, digits or '-', starting and ending with a letter or digit"
        )
        raise ValueError(msg)
    return value


def new_trigger_id() -> str:
    """128 random bits, base32 lowercase (26 characters), like the seed's short ids."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def new_secret() -> str:
    """256 random bits as 64 hex characters, the seed's secret format."""
    return secrets.token_hex(32)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a secret: what the store keeps."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, secret_hash: str) -> bool:
    """Constant-time comparison of a presented secret against a stored hash."""
    return hmac.compare_digest(hash_secret(secret), secret_hash)


def looks_like_secret(secret: str) -> bool:
    """Whether a value has the shape of a secret (64 lowercase hex characters)."""
    return bool(_SECRET.fullmatch(secret))


def encode_trigger_url(cluster: str, app: str, action: Action, trigger_id: str) -> str:
    """Base64 of ``cluster|app|action|id|``, action spelled as the seed does."""
    raw = f"{cluster}|{app}|{_URL_ACTION[action]}|{trigger_id}|"
    return base64.b64encode(raw.encode()).decode()


def decode_trigger_url(value: str) -> TriggerRef:
    """Parse a `triggerUrl` parameter. Accepts standard and URL-safe base64.

    A raw ``+`` in a query string arrives as a space; it is put back before decoding.
    """
    text = value.strip().replace(" ", "+")
    if not text:
        msg = "triggerUrl is empty: pass the value printed by `triggers create`"
        raise TriggerUrlError(msg)
    if len(text) > 512:
        msg = "triggerUrl is too long to be a trigger"
        raise TriggerUrlError(msg)
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        msg = "triggerUrl is not valid base64: copy it unchanged from the trigger's URL"
        raise TriggerUrlError(msg) from None
    parts = raw.split("|")
    if len(parts) != 5 or parts[4] != "":
        msg = (
            "triggerUrl must decode to 'clusterId|appName|action|triggerId|' "
            f"(4 fields and a trailing '|'), found {max(len(parts) - 1, 0)} separators"
        )
        raise TriggerUrlError(msg)
    cluster, app, url_action, trigger_id, _ = parts
    if url_action not in _ACTION:
        msg = f"triggerUrl action must be 'redeploy' or 'scaling', got {url_action[:32]!r}"
        raise TriggerUrlError(msg)
    if not (NAME_PATTERN.fullmatch(cluster) and NAME_PATTERN.fullmatch(app)):
        msg = "triggerUrl names a cluster or application that cannot exist"
        raise TriggerUrlError(msg)
    if not _TRIGGER_ID.fullmatch(trigger_id):
        msg = "triggerUrl carries a malformed trigger id"
        raise TriggerUrlError(msg)
    return TriggerRef(cluster=cluster, app=app, action=_ACTION[url_action], trigger_id=trigger_id)


def trigger_call_url(public_url: str, trigger: Trigger, secret: str) -> str:
    """The full callable URL, secret included, as printed once at creation."""
    token = encode_trigger_url(trigger.cluster, trigger.app, trigger.action, trigger.id)
    # '+' and '/' would be mangled by query parsing; '=' padding stays readable as in the seed.
    return (
        f"{public_url.rstrip('/')}/hook/trigger?triggerUrl={quote(token, safe='=')}&secret={secret}"
    )
