"""Live results for the browser: one subscription per gateway process, fanned out to tabs.

The first console page a process serves subscribes it to every result (`#`) on
`triggers.results` and every `running` notice on `triggers.progress` (a job's row shows
it running, with its rollout's progress, until its result replaces the row); every open
tab then listens to that one subscription through Server-Sent Events, never a queue of
its own. The process keeps the last events in a
ring, numbered, so a tab that reconnects with ``Last-Event-ID`` gets what it missed. An
event id is ``<boot>.<seq>.<finished_ms>``: a reconnect that lands on another process (or
on this one after a restart, or past the ring) is answered from the job history instead,
from the finish time it carries; the page skips a job it already shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import msgspec
import structlog

from shared.broker import Bus
from shared.messages import JobNotice, ResultEvent

__all__ = ["Listener", "LiveEvent", "LiveResults", "parse_event_id"]

log = structlog.get_logger("triggers.console")

# Events a reconnecting tab can get back from this process's memory.
RING_SIZE = 1000
# Events queued for one slow tab before it is dropped (it reconnects and catches up).
LISTENER_BACKLOG = 1000


class LiveEvent(msgspec.Struct, frozen=True):
    """One result (or `running` notice) as the tabs get it: its id, the event, and its
    table row, rendered once."""

    id: str
    seq: int
    event: ResultEvent | JobNotice
    row: str


def _moment(event: ResultEvent | JobNotice) -> datetime:
    """When the event happened: a result's finish, a notice's progress reading or start."""
    if isinstance(event, ResultEvent):
        return event.finished_at
    return event.progress_at or event.at


class Listener:
    """One tab's stream: events in order, or None when it must end (shutdown, overflow)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(LISTENER_BACKLOG + 1)

    def put(self, item: LiveEvent | None) -> bool:
        """Queue an event; False when the tab fell too far behind (it is ended)."""
        if self.queue.qsize() >= LISTENER_BACKLOG and item is not None:
            self.queue.put_nowait(None)
            return False
        self.queue.put_nowait(item)
        return True


def parse_event_id(text: str) -> tuple[str, int, datetime] | None:
    """``boot.seq.finished_ms`` as its parts; None when it is not one of ours."""
    boot, _, rest = text.strip().partition(".")
    seq, _, millis = rest.partition(".")
    if not boot or not seq.isdigit() or not millis.isdigit() or len(millis) > 15:
        return None
    return boot, int(seq), datetime.fromtimestamp(int(millis) / 1000, UTC)


class LiveResults:
    """The process's subscription to `triggers.results`, its ring and its listeners."""

    def __init__(
        self,
        render: Callable[[ResultEvent], str],
        render_notice: Callable[[JobNotice], str],
        ring_size: int = RING_SIZE,
    ) -> None:
        self.render = render
        self._render_notice = render_notice
        # Tells this process's ids from another's (or from before a restart).
        self.boot = secrets.token_hex(4)
        self._seq = 0
        self._ring: deque[LiveEvent] = deque(maxlen=ring_size)
        self._listeners: set[Listener] = set()
        self._subscribed = False
        self._lock = asyncio.Lock()

    @property
    def subscribed(self) -> bool:
        """Whether this process receives results."""
        return self._subscribed

    @property
    def seq(self) -> int:
        """The number of the newest event (0 before the first)."""
        return self._seq

    def current_id(self) -> str:
        """The id of the newest event (or of none yet): a page rendered now resumes there."""
        millis = 0
        if self._ring:
            millis = int(_moment(self._ring[-1].event).timestamp() * 1000)
        return f"{self.boot}.{self._seq}.{millis}"

    async def ensure_subscribed(self, bus: Bus, within: float = 3.0) -> bool:
        """Subscribe once for the process; False when the broker cannot be reached now.

        The robust channel restores the subscription after a broker reconnect; the events
        published while it was down are not seen (the job history still has them).
        """
        if self._subscribed:
            return True
        async with self._lock:
            if self._subscribed:
                return True
            if not bus.ready:
                return False
            try:
                async with asyncio.timeout(within):
                    await bus.subscribe_results(
                        self._on_result, binding="#", notices=self._on_notice
                    )
            except Exception as exc:  # the broker went away meanwhile: the next page retries
                log.warning("console.subscribe_failed", error=repr(exc))
                return False
            self._subscribed = True
            log.info("console.results_subscribed", bus=bus.name)
            return True

    async def _on_result(self, event: ResultEvent) -> None:
        self._add(event, self.render(event))

    async def _on_notice(self, notice: JobNotice) -> None:
        if notice.status == "running":  # approval requests have their own page
            self._add(notice, self._render_notice(notice))

    def _add(self, event: ResultEvent | JobNotice, row: str) -> None:
        self._seq += 1
        millis = int(_moment(event).timestamp() * 1000)
        live = LiveEvent(f"{self.boot}.{self._seq}.{millis}", self._seq, event, row)
        self._ring.append(live)
        for listener in list(self._listeners):
            if not listener.put(live):
                self._listeners.discard(listener)
                log.info("console.listener_behind", backlog=LISTENER_BACKLOG)

    def after(self, seq: int) -> list[LiveEvent] | None:
        """Events after `seq`, oldest first; None when the ring no longer reaches back."""
        if seq >= self._seq:
            return []
        if not self._ring or self._ring[0].seq > seq + 1:
            return None
        return [live for live in self._ring if live.seq > seq]

    @contextlib.contextmanager
    def listen(self) -> Iterator[Listener]:
        """A listener for one tab, registered while the context is open."""
        listener = Listener()
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)

    @property
    def listeners(self) -> int:
        """Tabs listening right now."""
        return len(self._listeners)

    def close(self) -> None:
        """End every stream (the gateway is shutting down)."""
        for listener in self._listeners:
            listener.queue.put_nowait(None)
        self._listeners.clear()
