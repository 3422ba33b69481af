"""Waiting for a job's result without a queue per request.

One results consumer per gateway process: an exclusive, auto-deleted queue bound to
`triggers.results` with this process's own key, `reply.<random>`, which no result's
routing key (`<status>.<action>.<cluster>.<app>`) matches. A command published with
`wait=N` carries that key as `reply_to`, and the worker adds it to its result's CC
header: the broker routes a copy to this queue only, so gateways do not receive (and
decode) the results of jobs nobody waits on. The queue hands each event to the request
waiting for that job id. A request registers its future *before* the command is
published, so a result that comes back faster than the publish confirm is not missed.

A result can still miss the queue: it lives on this process's broker node, and when that
node dies it is declared again on the next one, so a result routed in between is lost.
The requests waiting then (`disconnects` changed) read the history, which the recorder's
replicated queue fills, until their result comes or their wait ends (`ResultWaiter.result`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import structlog

from shared.broker import Bus, ready_within
from shared.jobs import JobStore
from shared.messages import ResultEvent

__all__ = ["ResultWaiter", "recorded_result"]

log = structlog.get_logger("triggers.gateway")

# How often a request whose reply queue may have missed its result reads the history.
LOOKUP_INTERVAL = 0.5
# The statuses a result event brings.
_FINAL = frozenset({"succeeded", "failed", "skipped"})


async def recorded_result(history: JobStore, job_id: str) -> ResultEvent | None:
    """The job's result as the history has it, once it finished; None before, or when the
    store cannot say (it is optional on this path)."""
    try:
        job = await history.get(job_id)
    except Exception:
        return None
    return job.result if job is not None and job.status in _FINAL else None


class ResultWaiter:
    """Routes result events to the futures of waiting requests, keyed by job id."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[ResultEvent]] = {}
        self._bus: Bus | None = None
        self._subscriber: asyncio.Task[None] | None = None
        self.reply_to = f"reply.{uuid.uuid4().hex}"

    @property
    def ready(self) -> bool:
        """Subscribed, on a connected bus: a result published now would reach us."""
        return self._bus is not None and self._bus.ready

    async def until_ready(self, within: float) -> bool:
        """Whether it is ready, waiting up to `within` seconds for a reconnect under way."""
        return await ready_within(lambda: self.ready, within)

    @property
    def disconnects(self) -> int:
        """The bus's connection losses so far. The reply queue is exclusive, so it dies
        with its node and is declared again on the next one: a result published in
        between reaches nobody, and a request that saw this change looks in the history."""
        return self._bus.disconnects if self._bus is not None else 0

    @property
    def waiting(self) -> int:
        """Requests waiting right now."""
        return len(self._pending)

    async def start(self, bus: Bus) -> None:
        """Subscribe to the results sent to `reply_to`, once for the process."""
        await bus.subscribe_results(self._on_result, binding=self.reply_to)
        self._bus = bus
        log.info("gateway.results_subscribed", bus=bus.name)

    def start_when_connected(self, bus: Bus, retry_every: float = 2.0) -> None:
        """Subscribe once the bus (connecting in the background) first connects.

        After that, the robust channel brings the queue and its consumer back by itself.
        """

        async def subscribe() -> None:
            await bus.wait_started()
            while True:
                try:
                    await self.start(bus)
                except Exception as exc:  # the connection dropped meanwhile: try again
                    log.warning("gateway.results_subscribe_failed", error=repr(exc))
                    await asyncio.sleep(retry_every)
                else:
                    return

        self._subscriber = asyncio.create_task(subscribe())

    async def close(self) -> None:
        """Stop a pending subscription attempt."""
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscriber

    @contextlib.contextmanager
    def expect(self, job_id: str) -> Iterator[asyncio.Future[ResultEvent]]:
        """A future that gets the job's first result; forgotten on exit."""
        future: asyncio.Future[ResultEvent] = asyncio.get_running_loop().create_future()
        self._pending[job_id] = future
        try:
            yield future
        finally:
            self._pending.pop(job_id, None)
            future.cancel()

    async def result(
        self, future: asyncio.Future[ResultEvent], job_id: str, *, since: int, history: JobStore
    ) -> tuple[ResultEvent, bool]:
        """The job's result from `future` (see `expect`) or, once the connection dropped
        after `since` (a `disconnects` count), from `history`, read every half second; and
        whether it came from there. The caller bounds the wait."""
        while True:
            await asyncio.wait([future], timeout=LOOKUP_INTERVAL)
            if future.done():
                return future.result(), False
            if self.disconnects != since:
                event = await recorded_result(history, job_id)
                if event is not None:
                    return event, True

    async def _on_result(self, event: ResultEvent) -> None:
        future = self._pending.get(event.job_id)
        # A redelivery can publish a second (duplicate) result: the first one answers.
        if future is not None and not future.done():
            future.set_result(event)
