"""The fault plan shared by the wire-level fakes: answer an error, or hang, on cue."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["Fault", "FaultPlan"]

Fault = int | str  # an HTTP status to answer, or "hang"


@dataclass
class FaultPlan:
    """Faults for the next matching requests, each used once, in order."""

    planned: list[tuple[Fault, str | None, str | None]] = field(default_factory=list)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def fail(
        self, fault: Fault, *, method: str | None = None, suffix: str | None = None, times: int = 1
    ) -> None:
        """Answer `fault` (a status, or "hang") to the next `times` matching requests."""
        self.planned.extend([(fault, method, suffix)] * times)

    def take(self, request: web.Request) -> Fault | None:
        """The fault planned for this request, if any (and forget it)."""
        for i, (fault, method, suffix) in enumerate(self.planned):
            if (method is None or request.method == method) and (
                suffix is None or request.path.endswith(suffix)
            ):
                del self.planned[i]
                return fault
        return None

    async def hang(self) -> None:
        """Wait until released (the client's timeout should fire first)."""
        await self._release.wait()

    def release(self) -> None:
        """End every hanging request."""
        self._release.set()
