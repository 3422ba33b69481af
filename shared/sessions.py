"""Sign-in sessions of the web console, in the database every gateway shares.

A session token is 256 random bits handed to the browser in a cookie; only its SHA-256
is stored, so reading the table signs nobody in. Each session also records a tag of the
admin token it was opened with: changing `TRIGGERS_ADMIN_TOKEN` ends every session.
Sessions live in the database (not in a gateway's memory) so that signing out on one
gateway ends the session on all of them, and several gateways behind a load balancer, or
the processes of ``--processes N``, accept the same cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from shared.messages import utcnow
from shared.sql import PostgresDriver, SqlBackend, SqliteDriver, parse_database

__all__ = ["ConsoleSessions", "admin_tag", "open_sessions"]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def admin_tag(admin_token: str) -> str:
    """A short keyed digest of the admin token: tells tokens apart, reveals nothing."""
    return hmac.new(admin_token.encode(), b"console-session", hashlib.sha256).hexdigest()[:32]


class ConsoleSessions(SqlBackend):
    """Open, check and end console sessions (table ``console_sessions``)."""

    async def open(
        self,
        admin_token: str,
        ttl: timedelta,
        *,
        remote: str | None = None,
        user_agent: str | None = None,
    ) -> tuple[str, datetime]:
        """A new session: its token (for the cookie, never stored) and its expiry.

        Expired sessions are deleted on the way, so the table stays as small as the
        number of people signed in.
        """
        now = utcnow()
        token = secrets.token_urlsafe(32)
        expires = now + ttl
        await self._execute("DELETE FROM console_sessions WHERE expires_at < ?", [now])
        await self._execute(
            "INSERT INTO console_sessions"
            " (token_hash, admin_tag, created_at, expires_at, remote, user_agent)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [_hash(token), admin_tag(admin_token), now, expires, remote, user_agent],
        )
        return token, expires

    async def valid(self, token: str, admin_token: str) -> bool:
        """Whether the token is a live session opened with this admin token."""
        rows = await self._fetch(
            "SELECT admin_tag FROM console_sessions WHERE token_hash = ? AND expires_at > ?",
            [_hash(token), utcnow()],
        )
        return bool(rows) and hmac.compare_digest(str(rows[0]["admin_tag"]), admin_tag(admin_token))

    async def close_session(self, token: str) -> None:
        """End a session (sign-out); unknown tokens are ignored."""
        await self._execute("DELETE FROM console_sessions WHERE token_hash = ?", [_hash(token)])


def open_sessions(database: str) -> ConsoleSessions:
    """The session table of the `TRIGGERS_DATABASE` (not connected until first use)."""
    dialect, target = parse_database(database)
    if dialect == "sqlite":
        return ConsoleSessions(SqliteDriver(target))
    # A console is a handful of people: two connections are plenty.
    return ConsoleSessions(PostgresDriver(target, max_size=2))
