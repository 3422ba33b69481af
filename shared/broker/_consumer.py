"""Command consuming: a channel per queue with its own prefetch, deliveries settled once."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from shared.broker._acks import Acks
from shared.broker._protocol import DeliveryHandler
from shared.broker._publisher import ATTEMPT_HEADER, ERROR_HEADER, dead_letter_headers
from shared.errors import BrokerUnavailable
from shared.topology import (
    COMMAND_QUEUE_ARGUMENTS,
    COMMAND_QUEUES,
    DEAD_EXCHANGE,
    RETRY_EXCHANGE,
    Replication,
    declare_queue,
    declare_recorder_queue,
    retry_routing_key,
)

__all__ = ["Consumers", "Republish"]

Republish = Callable[[AbstractIncomingMessage, str, str, dict[str, Any]], Awaitable[None]]


class _AmqpDelivery:
    def __init__(self, message: AbstractIncomingMessage, republish: Republish, acks: Acks) -> None:
        self._message = message
        self._republish = republish
        self._acks = acks

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def attempt(self) -> int:
        # Retries are republished with an attempt header; redeliveries of one message
        # (a worker died holding it) are counted by the quorum queue in x-delivery-count.
        headers = self._message.headers or {}
        retried = headers.get(ATTEMPT_HEADER, 1)
        redelivered = headers.get("x-delivery-count", 0)
        return (retried if isinstance(retried, int) else 1) + (
            redelivered if isinstance(redelivered, int) else 0
        )

    async def ack(self) -> None:
        tag = self._message.delivery_tag
        if tag is None:
            await self._message.ack()
        else:
            await self._acks.ack(self._message, tag)

    async def _reject(self, *, requeue: bool) -> None:
        if requeue:
            await self._message.nack(requeue=True)
        else:
            await self._message.reject(requeue=False)
        if self._message.delivery_tag is not None:
            self._acks.settled(self._message.delivery_tag)

    async def requeue(self) -> None:
        await self._reject(requeue=True)

    async def retry(self, delay: float, error: str) -> None:
        # Publish the next attempt (confirmed) before acking this one: a crash between
        # the two leaves a duplicate, which the job ledger absorbs, never a loss.
        headers = {**(self._message.headers or {}), ATTEMPT_HEADER: self.attempt + 1}
        headers[ERROR_HEADER] = error[:1000]
        headers.pop("x-delivery-count", None)
        await self._republish(
            self._message,
            RETRY_EXCHANGE,
            retry_routing_key(self._message.routing_key or "", delay),
            headers,
        )
        await self.ack()

    async def dead_letter(self, reason: str) -> None:
        # Republished rather than rejected, so the reason travels with the message; if the
        # broker will not take it, a plain reject still dead-letters it (reason: "rejected").
        queue = self._message.routing_key or ""
        headers = dead_letter_headers(self._message, reason, attempts=self.attempt, queue=queue)
        try:
            await self._republish(
                self._message, DEAD_EXCHANGE, self._message.routing_key or "", headers
            )
        except BrokerUnavailable:
            await self._reject(requeue=False)
            return
        await self.ack()


@dataclass
class _Consumer:
    name: str
    channel: AbstractChannel
    queue: AbstractQueue
    tag: str


async def _consuming(consumer: _Consumer) -> bool:
    """Whether the consumer's channel is open with the consumer registered on it (or the
    connection is going or being restored: its restore, not the check, brings it back)."""
    if consumer.channel.is_closed:
        return False
    try:
        underlay = cast("aiormq.Channel", await consumer.channel.get_underlay_channel())
    except (aiormq.exceptions.AMQPError, RuntimeError):
        return True
    return consumer.tag in underlay.consumers


class Consumers:
    """The consumers of one connection: the command queues and the recorder's queue.

    Deliveries retry and dead-letter through `republish` (the bus's confirmed publish).
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        republish: Republish,
        replication: Replication,
        arguments: dict[str, dict[str, Any]],
    ) -> None:
        self._connection = connection
        self._republish = republish
        self._replication = replication
        self._arguments = arguments
        self._commands: list[_Consumer] = []
        self._events: list[_Consumer] = []
        self._consume_with: tuple[DeliveryHandler, int] | None = None

    async def commands(self, handler: DeliveryHandler, prefetch: int) -> None:
        """A channel per command queue, each with its own prefetch."""
        self._consume_with = (handler, prefetch)
        for name in COMMAND_QUEUES.values():
            await self._consume(name)

    async def _consume(self, name: str) -> None:
        handler, prefetch = self._consume_with or (None, 0)
        assert handler is not None  # noqa: S101 - set by commands()
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        # Declared on this channel so the robust channel re-declares it on reconnect, with
        # the arguments the topology found to work.
        arguments = self._arguments.get(name)
        queue: AbstractQueue
        if arguments is not None:
            queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        else:
            queue = await declare_queue(channel, name, COMMAND_QUEUE_ARGUMENTS, self._replication)
        tag = await queue.consume(self._deliveries_to(handler))
        self._commands.append(_Consumer(name, channel, queue, tag))

    def _deliveries_to(
        self, handler: DeliveryHandler
    ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        """A consumer callback handing each message to `handler`, acks batched per channel."""
        acks = Acks(None)

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal acks
            if acks.channel is not message.channel:  # a new channel after a reconnect
                acks = Acks(message.channel)
            if message.delivery_tag is not None:
                acks.delivered(message.delivery_tag)
            await handler(_AmqpDelivery(message, self._republish, acks))

        return on_message

    @property
    def consuming(self) -> bool:
        """Whether command consumers were asked for and not stopped since."""
        return self._consume_with is not None

    async def check(self) -> list[str]:
        """Verify every command queue still has our consumer; re-create those that do not.

        Robust connections restore consumers after a reconnect, but not always (aio-pika
        #231, #626): a closed channel, or one the consumer is no longer registered on (never
        consumed again after a reconnect, or cancelled by the broker), gets a new channel
        and consumer. Returns the queues restored.

        The client's view decides, not the broker's consumer count: a quorum queue whose
        leader is out of reach (a minority, or while it elects one) counts 0 consumers
        though ours is registered and resumes once a leader is back, and consuming anew
        on such a queue waits 15 s and then closes the whole connection (INTERNAL_ERROR).
        """
        restored = []
        for consumer in list(self._commands):
            if await _consuming(consumer):
                continue
            self._commands.remove(consumer)
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await consumer.channel.close()
            await self._consume(consumer.name)
            restored.append(consumer.name)
        return restored

    async def job_events(self, handler: DeliveryHandler, prefetch: int) -> None:
        """Consume `triggers.results.recorder` (declared here) on a channel of its own."""
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await declare_recorder_queue(channel, self._replication)
        tag = await queue.consume(self._deliveries_to(handler))
        # Kept apart from the command consumers, which check() re-creates as such.
        self._events.append(_Consumer(queue.name, channel, queue, tag))

    async def stop(self) -> None:
        """Cancel the consumers; unsettled deliveries can still be acked."""
        self._consume_with = None
        for consumer in [*self._commands, *self._events]:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await consumer.queue.cancel(consumer.tag)
        self._commands.clear()
        self._events.clear()
