"""`MemoryBus`: the in-process bus of `triggers dev` when RabbitMQ is not running."""

from __future__ import annotations

import asyncio
import contextlib

from shared.broker._protocol import DeliveryHandler, NoticeHandler, ResultHandler
from shared.messages import Action, CommandEnvelope, JobNotice, ResultEvent, encode
from shared.topology import COMMAND_QUEUES, result_routing_key

__all__ = ["MemoryBus", "topic_matches"]


class _MemoryDelivery:
    def __init__(self, bus: MemoryBus, action: Action, body: bytes, attempt: int) -> None:
        self._bus = bus
        self._action = action
        self._body = body
        self._attempt = attempt

    @property
    def body(self) -> bytes:
        return self._body

    @property
    def attempt(self) -> int:
        return self._attempt

    async def ack(self) -> None:
        pass

    async def requeue(self) -> None:
        self._bus.enqueue(self._action, self._body, self._attempt + 1)

    async def retry(self, delay: float, error: str) -> None:
        asyncio.get_running_loop().call_later(
            delay, self._bus.enqueue, self._action, self._body, self._attempt + 1
        )

    async def dead_letter(self, reason: str) -> None:
        self._bus.dead.append((self._body, reason))


class _MemoryEventDelivery:
    """A job event handed straight to the recorder: nothing to settle in process."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    @property
    def body(self) -> bytes:
        return self._body

    @property
    def attempt(self) -> int:
        return 1

    async def ack(self) -> None:
        pass

    async def requeue(self) -> None:
        pass

    async def retry(self, delay: float, error: str) -> None:
        pass

    async def dead_letter(self, reason: str) -> None:
        pass


def topic_matches(binding: str, key: str) -> bool:
    """AMQP topic matching for bindings made of words, '*' and a trailing '#'."""
    pattern, words = binding.split("."), key.split(".")
    for i, part in enumerate(pattern):
        if part == "#":
            return True
        if i >= len(words) or (part != "*" and part != words[i]):
            return False
    return len(pattern) == len(words)


class MemoryBus:
    """An in-process bus for `triggers dev` when RabbitMQ is not running.

    Same interface and settle semantics, no durability: what is queued dies with the process.
    """

    name = "in-process"
    node = "in-process"
    disconnects = 0
    durable = False

    def __init__(self) -> None:
        self._queues: dict[Action, asyncio.Queue[tuple[bytes, int]]] = {
            action: asyncio.Queue() for action in COMMAND_QUEUES
        }
        self._subscribers: list[tuple[str, ResultHandler]] = []
        self._notice_subscribers: list[tuple[str, NoticeHandler]] = []
        self._recorders: list[DeliveryHandler] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.dead: list[tuple[bytes, str]] = []

    @property
    def ready(self) -> bool:
        """Always: the queues live in this process."""
        return True

    async def start(self) -> None:
        """Nothing to connect to."""

    async def wait_started(self) -> None:
        """Started from the beginning."""

    def enqueue(self, action: Action, body: bytes, attempt: int = 1) -> None:
        """Put a command body on an action's queue."""
        self._queues[action].put_nowait((body, attempt))

    async def publish_command(self, envelope: CommandEnvelope) -> None:
        """Queue the command; 'confirmed' once it is in the queue."""
        self.enqueue(envelope.action, encode(envelope))

    async def publish_result(self, event: ResultEvent, *, cc: str | None = None) -> None:
        """Hand the event to every subscriber matching its key (or `cc`), once each."""
        keys = [result_routing_key(event.status, event.action, event.cluster, event.app)]
        if cc:
            keys.append(cc)
        for binding, handler in list(self._subscribers):
            if any(topic_matches(binding, key) for key in keys):
                await handler(event)
        await self._record(encode(event))

    async def publish_notice(self, notice: JobNotice) -> None:
        """Hand the notice to every subscriber of notices matching its key, then to the
        recorder, if one consumes."""
        key = result_routing_key(notice.status, notice.action, notice.cluster, notice.app)
        for binding, handler in list(self._notice_subscribers):
            if topic_matches(binding, key):
                await handler(notice)
        await self._record(encode(notice))

    async def _record(self, body: bytes) -> None:
        for handler in self._recorders:
            await handler(_MemoryEventDelivery(body))

    async def consume_job_events(self, handler: DeliveryHandler, *, prefetch: int) -> None:
        """Register the recorder; events are handed over as they are published."""
        self._recorders.append(handler)

    async def consume_commands(self, handler: DeliveryHandler, *, prefetch: int) -> None:
        """Up to `prefetch` handlers at a time per queue."""
        for action, queue in self._queues.items():
            self._tasks.append(asyncio.create_task(self._pump(action, queue, handler, prefetch)))

    async def _pump(
        self,
        action: Action,
        queue: asyncio.Queue[tuple[bytes, int]],
        handler: DeliveryHandler,
        prefetch: int,
    ) -> None:
        slots = asyncio.Semaphore(prefetch)
        running: set[asyncio.Task[None]] = set()
        while True:
            body, attempt = await queue.get()
            await slots.acquire()

            async def run(body: bytes = body, attempt: int = attempt) -> None:
                try:
                    await handler(_MemoryDelivery(self, action, body, attempt))
                finally:
                    slots.release()

            task = asyncio.create_task(run())
            running.add(task)
            task.add_done_callback(running.discard)

    async def stop_consuming(self) -> None:
        """Stop the pumps."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def check_consumers(self) -> list[str]:
        """In-process pumps cannot lose their consumer."""
        return []

    async def subscribe_results(
        self, handler: ResultHandler, *, binding: str = "#", notices: NoticeHandler | None = None
    ) -> None:
        """Register a subscriber (of notices too, with `notices`)."""
        self._subscribers.append((binding, handler))
        if notices is not None:
            self._notice_subscribers.append((binding, notices))

    async def queue_depths(self) -> dict[str, int] | None:
        """No broker queues to count."""
        return None

    async def close(self) -> None:
        """Stop the pumps."""
        await self.stop_consuming()
