"""The one middleware every request goes through (inside the connection guard's).

It answers errors in JSON and writes the request's summary line (`gateway.errors`), then
for a call to ``/hook/`` counts it (`gateway.metrics`) and records its audit entry
(`gateway.audit`), both from the final status and the call's typed outcome. One
middleware rather than three: aiohttp wraps the handler once per middleware on every
request, which cost a few per cent of the gateway's CPU per call.
"""

from __future__ import annotations

from aiohttp import web

from gateway.audit import record_call
from gateway.errors import Handler, answered
from gateway.metrics import count_call

__all__ = ["call_middleware"]


@web.middleware
async def call_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors to JSON and the summary line; for a trigger call, its metrics and audit entry."""
    response = await answered(request, handler)
    if request.path.startswith("/hook/"):
        count_call(request, response)
        record_call(request, response)
    return response
