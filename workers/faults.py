"""Fault injection for the fault-tolerance tests, enabled only by ``TRIGGERS_FAULTS``.

- ``crash-after-apply``: the worker SIGKILLs itself after a change and before its report.
- ``flaky-orchestrator``: half of the orchestrator's calls fail with a retryable error,
  half of those *after* the change was made (the nastiest case: a timeout on a call the
  platform did apply).
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Awaitable, Callable
from datetime import datetime

from shared.errors import RetryableError
from shared.messages import ServiceState, Target
from workers.orchestrators.base import Change, Orchestrator, ProgressReport

__all__ = ["FlakyOrchestrator", "crash_now", "with_faults"]


def crash_now() -> None:
    """Die as a SIGKILL would: no cleanup, no ack, no report."""
    os.kill(os.getpid(), signal.SIGKILL)


class FlakyOrchestrator:
    """Wraps an orchestrator and fails half of its changes."""

    def __init__(self, inner: Orchestrator, failure_rate: float = 0.5) -> None:
        self._inner = inner
        self._rate = failure_rate
        self._random = random.Random()  # noqa: S311 - chaos, not cryptography
        self.name = inner.name

    def _roll(self) -> str | None:
        if self._random.random() >= self._rate:
            return None
        return "before" if self._random.random() < 0.5 else "after"

    async def state(self, target: Target) -> dict[str, ServiceState]:
        """Reads never fail."""
        return await self._inner.state(target)

    async def recorded(self, job_id: str, target: Target) -> Change | None:
        """Ledger reads never fail."""
        return await self._inner.recorded(job_id, target)

    async def _faulty(self, apply: Callable[[], Awaitable[Change]]) -> Change:
        fault = self._roll()
        if fault == "before":
            msg = "injected fault: the orchestrator API timed out"
            raise RetryableError(msg)
        change = await apply()
        if fault == "after":
            msg = "injected fault: the answer was lost after the change was made"
            raise RetryableError(msg)
        return change

    async def redeploy(
        self,
        job_id: str,
        target: Target,
        *,
        image: str | None = None,
        issued_at: datetime | None = None,
        progress: ProgressReport | None = None,
    ) -> Change:
        """Redeploy, perhaps failing before or after."""
        return await self._faulty(
            lambda: self._inner.redeploy(
                job_id, target, image=image, issued_at=issued_at, progress=progress
            )
        )

    async def scale(
        self,
        job_id: str,
        target: Target,
        *,
        delta: int,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
    ) -> Change:
        """Scale, perhaps failing before or after."""
        return await self._faulty(
            lambda: self._inner.scale(
                job_id, target, delta=delta, min_replicas=min_replicas, max_replicas=max_replicas
            )
        )

    async def close(self) -> None:
        """Close the wrapped orchestrator."""
        await self._inner.close()


def with_faults(orchestrator: Orchestrator, faults: frozenset[str]) -> Orchestrator:
    """The orchestrator, wrapped as the configured faults ask."""
    if "flaky-orchestrator" in faults:
        return FlakyOrchestrator(orchestrator)
    return orchestrator
