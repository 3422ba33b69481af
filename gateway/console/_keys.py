"""The console's application keys.

Kept beside the console rather than in `gateway/keys.py`: they name the console's own
types, which import `gateway.keys` themselves.
"""

from __future__ import annotations

import jinja2
from aiohttp import web

from gateway.console._live import LiveResults
from shared.sessions import ConsoleSessions

__all__ = ["LIVE", "SESSION", "SESSIONS", "TEMPLATES"]

LIVE = web.AppKey("console_live", LiveResults)
SESSIONS = web.AppKey("console_sessions", ConsoleSessions)
TEMPLATES = web.AppKey("console_templates", jinja2.Environment)
# The signed-in request's session token (set once it was checked).
SESSION = web.RequestKey("console_session", str)
