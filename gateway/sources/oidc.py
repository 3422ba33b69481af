"""Google-signed OIDC tokens, as an authenticated Pub/Sub push subscription sends them in
``Authorization: Bearer <JWT>``: RS256, issued by accounts.google.com for the
subscription's audience (and service account).

The public keys (a JWKS) are read from `TRIGGERS_OIDC_JWKS_URL` and kept an hour; an
unknown key id reads them again, at most once a minute, as Google rotates its keys.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from shared.errors import PermanentError

if TYPE_CHECKING:
    import jwt

__all__ = ["OidcError", "verify_google_token"]

_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
_KEEP = 3600.0
_REFRESH_AT_MOST = 60.0


class OidcError(PermanentError, ValueError):
    """The token is missing, malformed, unsigned by a known key, expired or not ours."""


class _Keys:
    """A JWKS read over HTTP, cached."""

    def __init__(self) -> None:
        self._sets: dict[str, tuple[float, jwt.PyJWKSet]] = {}
        self._lock = asyncio.Lock()

    async def key(self, url: str, kid: str) -> Any:
        cached = self._sets.get(url)
        now = time.monotonic()
        if (
            cached is None
            or now - cached[0] > _KEEP
            or (
                kid not in {k.key_id for k in cached[1].keys} and now - cached[0] > _REFRESH_AT_MOST
            )
        ):
            async with self._lock:
                cached = self._sets[url] = (now, await _fetch(url))
        for key in cached[1].keys:
            if key.key_id == kid:
                return key.key
        msg = f"the token is signed with key {kid[:40]!r}, which {url} does not list"
        raise OidcError(msg)


async def _fetch(url: str) -> jwt.PyJWKSet:
    import jwt  # noqa: PLC0415 - PyJWT loads OpenSSL's bindings (10 MB): only OIDC triggers

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(url) as response,
        ):
            response.raise_for_status()
            return jwt.PyJWKSet.from_dict(await response.json(content_type=None))
    except (aiohttp.ClientError, TimeoutError, jwt.PyJWKSetError, ValueError) as exc:
        msg = f"cannot read the token keys from {url}: {type(exc).__name__}"
        raise OidcError(msg) from None


_KEYS = _Keys()


async def verify_google_token(
    token: str, *, audience: str, email: str | None, jwks_url: str
) -> dict[str, Any]:
    """The token's claims once it is verified; raises `OidcError` saying why not."""
    import jwt  # noqa: PLC0415 - PyJWT loads OpenSSL's bindings (10 MB): only OIDC triggers

    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        msg = "the Authorization bearer token is not a JWT"
        raise OidcError(msg) from None
    if not isinstance(kid, str):
        msg = "the token names no signing key (kid)"
        raise OidcError(msg)
    key = await _KEYS.key(jwks_url, kid)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=audience,
            issuer=_ISSUERS,
            options={"require": ["exp", "iat", "iss", "aud"]},
        )
    except jwt.PyJWTError as exc:
        msg = f"the token does not verify: {exc}"
        raise OidcError(msg) from None
    if email is not None and (claims.get("email") != email or not claims.get("email_verified")):
        msg = "the token is issued for another service account than --oidc-email"
        raise OidcError(msg)
    return claims
