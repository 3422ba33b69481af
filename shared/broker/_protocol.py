"""The interfaces: what the gateway and the workers need from a message broker.

Handlers never import a transport; they get a `Delivery` and decide ack, requeue or
dead-letter through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from shared.messages import CommandEnvelope, JobNotice, ResultEvent

__all__ = [
    "Bus",
    "Delivery",
    "DeliveryHandler",
    "NoticeHandler",
    "ResultHandler",
    "ready_within",
]


class Delivery(Protocol):
    """One delivery of a command; settle it exactly once."""

    @property
    def body(self) -> bytes:
        """The raw message body."""
        ...

    @property
    def attempt(self) -> int:
        """1 on the first delivery, then 2, 3, ... as the broker counts them."""
        ...

    async def ack(self) -> None:
        """Done: the broker forgets the message."""
        ...

    async def requeue(self) -> None:
        """Give it back untouched, for this or another worker (counts against the delivery limit)."""
        ...

    async def retry(self, delay: float, error: str) -> None:
        """Try again in `delay` seconds as attempt + 1; the wait happens in the broker."""
        ...

    async def dead_letter(self, reason: str) -> None:
        """Give up: the message goes to the dead-letter queue with `reason` beside it."""
        ...


DeliveryHandler = Callable[[Delivery], Awaitable[None]]
ResultHandler = Callable[[ResultEvent], Awaitable[None]]
NoticeHandler = Callable[[JobNotice], Awaitable[None]]


class Bus(Protocol):
    """What the gateway and the workers need from a message broker."""

    name: str

    @property
    def ready(self) -> bool:
        """Whether a publish can succeed now."""
        ...

    @property
    def node(self) -> str | None:
        """The broker node in use ("host:port"), or None while not connected."""
        ...

    @property
    def disconnects(self) -> int:
        """Connections lost so far: a result published meanwhile may have reached nobody."""
        ...

    @property
    def durable(self) -> bool:
        """Whether queued messages outlive the process (and dead letters are kept)."""
        ...

    async def start(self) -> None:
        """Connect and declare the topology."""
        ...

    async def wait_started(self) -> None:
        """Return once the first connection is up."""
        ...

    async def publish_command(self, envelope: CommandEnvelope) -> None:
        """Publish and wait for the broker's confirm; raise `BrokerUnavailable` otherwise."""
        ...

    async def publish_result(self, event: ResultEvent, *, cc: str | None = None) -> None:
        """Publish a result event (also to the routing key `cc`) and wait for the confirm."""
        ...

    async def publish_notice(self, notice: JobNotice) -> None:
        """Publish a job's progress notice (`running`) and wait for the confirm."""
        ...

    async def consume_commands(self, handler: DeliveryHandler, *, prefetch: int) -> None:
        """Start delivering commands to `handler`, at most `prefetch` unsettled per queue."""
        ...

    async def stop_consuming(self) -> None:
        """Stop taking new commands; deliveries in hand may still be settled."""
        ...

    async def check_consumers(self) -> list[str]:
        """Re-create consumers that did not survive a reconnect; the queues restored."""
        ...

    async def subscribe_results(
        self, handler: ResultHandler, *, binding: str = "#", notices: NoticeHandler | None = None
    ) -> None:
        """Call `handler` for every result event matching a topic binding key; with
        `notices`, that one for every progress notice matching it too, in publish order
        with the results (a job's `running` notices before its result)."""
        ...

    async def consume_job_events(self, handler: DeliveryHandler, *, prefetch: int) -> None:
        """Deliver every result event and progress notice, durably, to one recorder."""
        ...

    async def queue_depths(self) -> dict[str, int] | None:
        """Messages ready per broker queue, or None for a bus without broker queues."""
        ...

    async def close(self) -> None:
        """Disconnect."""
        ...


async def ready_within(ready: Callable[[], bool], within: float) -> bool:
    """Whether `ready()` holds, waiting up to `within` seconds for a reconnect under way.

    Checked every 50 ms: it only runs while a broker connection is being restored.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not ready():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True
