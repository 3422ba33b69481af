"""Authentication beyond the URL secret: header secrets, HMAC signatures, replays.

Every scheme runs after the trigger's secret has matched, so its errors tell a caller
who holds the secret what to fix without helping anyone else.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

from gateway.claims import Reservation
from gateway.errors import ApiError
from gateway.sources._event import Headers
from gateway.sources.oidc import OidcError, verify_google_token
from shared.triggers import TriggerOptions, looks_like_secret

__all__ = ["github_signature", "header_secret", "presented_secret", "verify_signature"]

_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)
# Senders that send the bare hex HMAC of the body, and the hash: Nexus still uses SHA-1.
_BARE_HEX: dict[str, tuple[str, str]] = {
    "jfrog": ("X-JFrog-Event-Auth", "sha256"),
    "nexus": ("X-Nexus-Webhook-Signature", "sha1"),
}
_TIMESTAMPED = re.compile(r"^t=(\d{1,12}),v1=([0-9a-fA-F]{64})$")


def presented_secret(headers: Headers, query_secret: str | None) -> tuple[str | None, bool]:
    """The secret to check, and whether it came from the query string.

    A header wins, unless it cannot be a trigger secret and the query has one: a sender's
    own ``Authorization`` header must not hide a correct secret in the URL.
    """
    from_header = header_secret(headers)
    if from_header and (looks_like_secret(from_header) or not query_secret):
        return from_header, False
    return query_secret, query_secret is not None


def header_secret(headers: Headers) -> str | None:
    """The secret from ``X-Trigger-Secret`` or ``Authorization`` (Bearer, or bare as Harbor sends it)."""
    explicit = headers.get("X-Trigger-Secret", "").strip()
    if explicit:
        return explicit
    authorization = headers.get("Authorization", "")
    bearer = _BEARER.match(authorization)
    if bearer:
        return bearer.group(1)
    bare = authorization.strip()
    return bare if bare and " " not in bare else None


def github_signature(key: str, body: bytes) -> str:
    """``sha256=<hex>`` as GitHub computes ``X-Hub-Signature-256``."""
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def _unauthorised(code: str, detail: str) -> ApiError:
    return ApiError(401, code, detail)


def _check_hex(
    header: str, value: str, key: str, body: bytes, *, digest: str = "sha256", prefixed: bool = True
) -> None:
    size = hashlib.new(digest).digest_size * 2
    pattern = rf"^sha256=([0-9a-fA-F]{{{size}}})$" if prefixed else rf"^([0-9a-fA-F]{{{size}}})$"
    match = re.fullmatch(pattern, value.strip())
    if match is None:
        form = (
            "sha256=<hex HMAC-SHA256 of the body>"
            if prefixed
            else f"<hex HMAC-{digest.upper()} of the body>"
        )
        raise _unauthorised(
            "missing_signature" if not value else "malformed_signature",
            f"this trigger needs {header}: {form}",
        )
    expected = hmac.new(key.encode(), body, digest).hexdigest()
    if not hmac.compare_digest(expected, match.group(1).lower()):
        raise _unauthorised(
            "bad_signature",
            f"{header} does not match the body; check the signing secret and that the body is sent unchanged",
        )


async def _check_google_token(options: TriggerOptions, headers: Headers, jwks_url: str) -> None:
    bearer = _BEARER.match(headers.get("Authorization", ""))
    if bearer is None or looks_like_secret(bearer.group(1)):
        raise _unauthorised(
            "missing_token",
            "this trigger needs the push subscription's OIDC token (Authorization: Bearer <JWT>), "
            "with the trigger's secret in the URL",
        )
    assert options.oidc_audience is not None  # noqa: S101 - TriggerOptions.check requires it
    try:
        await verify_google_token(
            bearer.group(1),
            audience=options.oidc_audience,
            email=options.oidc_email,
            jwks_url=jwks_url,
        )
    except OidcError as exc:
        raise _unauthorised("bad_token", str(exc)) from None


async def verify_signature(
    options: TriggerOptions,
    trigger_id: str,
    headers: Headers,
    body: bytes,
    *,
    claims: Reservation,
    tolerance: float,
    jwks_url: str = "",
    now: float | None = None,
) -> None:
    """Check the trigger's signature scheme, if it has one; raise ApiError when it fails.

    ``timestamped``: ``X-Signature: t=<unix>,v1=<hex>`` over ``"{t}.{body}"``; a
    timestamp further than `tolerance` from now is stale (401) and a signature seen
    before is a replay (409).
    """
    if options.signature == "google-oidc":
        await _check_google_token(options, headers, jwks_url)
        return
    key = options.signing_secret
    if options.signature is None or key is None:
        return
    if options.signature == "github":
        _check_hex("X-Hub-Signature-256", headers.get("X-Hub-Signature-256", ""), key, body)
        return
    if options.signature in _BARE_HEX:
        header, digest = _BARE_HEX[options.signature]
        _check_hex(header, headers.get(header, ""), key, body, digest=digest, prefixed=False)
        return
    value = headers.get("X-Signature", "")
    if options.signature == "hmac":
        _check_hex("X-Signature", value, key, body)
        return
    match = _TIMESTAMPED.fullmatch(value.strip())
    if match is None:
        raise _unauthorised(
            "missing_signature" if not value else "malformed_signature",
            "this trigger needs X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of '{t}.{body}'>",
        )
    stamp, given = int(match.group(1)), match.group(2).lower()
    signed = match.group(1).encode() + b"." + body
    expected = hmac.new(key.encode(), signed, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given):
        raise _unauthorised(
            "bad_signature", "X-Signature does not match '{t}.{body}'; check the signing secret"
        )
    skew = abs((time.time() if now is None else now) - stamp)
    if skew > tolerance:
        raise _unauthorised(
            "stale_signature",
            f"the signature's timestamp is {skew:.0f} s away from now (at most {tolerance:.0f} s); "
            "sign each request when sending it and keep clocks in sync",
        )
    # Kept twice the tolerance: long enough that a captured request can never be replayed.
    # Remembered by its SHA-256, so the shared store (Redis) holds no signature itself.
    # A signature whose command was sent but not confirmed is taken over: the sender's
    # identical retry publishes the same job again (`gateway.claims`).
    seen_key = f"signature:{trigger_id}:{hashlib.sha256(given.encode()).hexdigest()}"
    earlier = await claims.claim(seen_key, 2 * tolerance, sticky=True)
    if earlier is not None and not earlier.unconfirmed:
        raise ApiError(
            409, "replayed_request", "this signed request was already received; sign each call anew"
        )
