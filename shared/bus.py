"""The transport behind a small interface: RabbitMQ in production, in-process for `dev`.

Handlers never import the transport; they get a `Delivery` and decide ack, requeue or
dead-letter through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq import spec

from shared.amqp_transport import BrokerNodes, CoalescingConnection, redact
from shared.errors import BrokerUnavailable
from shared.messages import (
    COMMAND_CONTENT_TYPE,
    NOTICE_CONTENT_TYPE,
    RESULT_CONTENT_TYPE,
    Action,
    CommandEnvelope,
    JobNotice,
    ResultEvent,
    decode_result,
    encode,
    utcnow,
)
from shared.metrics import PUBLISH_SECONDS
from shared.settings import Settings
from shared.topology import (
    COMMAND_QUEUE_ARGUMENTS,
    COMMAND_QUEUES,
    COMMANDS_EXCHANGE,
    DEAD_EXCHANGE,
    RECORDER_QUEUE,
    RESULTS_EXCHANGE,
    RETRY_EXCHANGE,
    Replication,
    Topology,
    declare,
    declare_queue,
    declare_recorder_queue,
    result_routing_key,
    retry_routing_key,
)

__all__ = [
    "AmqpBus",
    "Bus",
    "Delivery",
    "DeliveryHandler",
    "MemoryBus",
    "ResultHandler",
    "copy_message",
]

log = structlog.get_logger("triggers.bus")


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

    async def start(self) -> None:
        """Connect and declare the topology."""
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

    async def subscribe_results(self, handler: ResultHandler, *, binding: str = "#") -> None:
        """Call `handler` for every result event matching a topic binding key."""
        ...

    async def consume_job_events(self, handler: DeliveryHandler, *, prefetch: int) -> None:
        """Deliver every result event and progress notice, durably, to one recorder."""
        ...

    async def close(self) -> None:
        """Disconnect."""
        ...


def copy_message(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """A persistent copy of a delivered message with new headers, ready to publish again."""
    return aio_pika.Message(
        body=message.body,
        content_type=message.content_type,
        type=message.type,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers,
    )


@dataclass
class _Consumer:
    name: str
    channel: AbstractChannel
    queue: AbstractQueue
    tag: str


_PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


def _properties(
    message_type: str,
    message_id: str,
    correlation_id: str,
    timestamp: datetime,
    headers: dict[str, Any] | None = None,
) -> spec.Basic.Properties:
    """The properties of every message we publish: persistent JSON, typed and identified."""
    return spec.Basic.Properties(
        content_type="application/json",
        message_type=message_type,
        message_id=message_id,
        correlation_id=correlation_id or None,
        timestamp=timestamp,
        delivery_mode=_PERSISTENT,
        headers=headers,
    )


ATTEMPT_HEADER = "x-triggers-attempt"
ERROR_HEADER = "x-triggers-error"


_IN_HAND, _ACK, _SETTLED = 0, 1, 2
# Delivery tags one consumer channel keeps track of at most (a few prefetch windows).
_TRACK_AT_MOST = 10_000


class _Acks:
    """The acks of one consumer channel, sent together: one frame for many deliveries.

    Commands that finish together (a group commit, their result confirms arriving in one
    read) are acked with one ``basic.ack(multiple=True)`` instead of one frame each: a
    socket write in the worker and a frame for the broker saved per command.

    Safe by construction: `multiple` covers every unsettled delivery up to its tag, so it
    is sent only for a run of consecutive tags from the lowest unsettled one, each
    registered when delivered (a channel numbers its deliveries 1, 2, 3, ...) and each
    either waiting for this ack or already settled otherwise (a nack or reject written
    to the channel before; the broker reads a channel's frames in order). A delivery
    still in hand ends the run; acks beyond it are sent one by one, never held back.
    One task sends them all, in order. Deliveries of an earlier channel (before a
    reconnect) keep their own `_Acks`, whose acks fail as they would alone. Should a
    delivery stay unsettled for good (a handler that failed before settling), the tags
    kept past it are bounded: beyond `_TRACK_AT_MOST` this channel acks one by one.
    """

    __slots__ = ("_sender", "_state", "_through", "_tracking", "_waiting", "channel")

    def __init__(self, channel: object) -> None:
        self.channel = channel
        self._through = 0  # every delivery tag up to this one is settled
        self._state: dict[int, int] = {}
        self._waiting: dict[int, tuple[AbstractIncomingMessage, asyncio.Future[None]]] = {}
        self._sender: asyncio.Task[None] | None = None
        self._tracking = True

    def delivered(self, tag: int) -> None:
        """A delivery reached the consumer (called before anything is awaited)."""
        if self._tracking:
            self._state[tag] = _IN_HAND

    def settled(self, tag: int) -> None:
        """The delivery was nacked or rejected, and that frame is written."""
        if tag in self._state:
            self._state[tag] = _SETTLED

    def ack(self, message: AbstractIncomingMessage, tag: int) -> asyncio.Future[None]:
        """Ack `message` (delivery `tag`) with the next batch; done once its frame is written."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._tracking:
            self._state[tag] = _ACK
        self._waiting[tag] = (message, future)
        if self._sender is None:
            # Started after what is already scheduled: acks of this turn go together.
            self._sender = loop.create_task(self._send_all())
        return future

    def _run(self) -> int | None:
        """Settle the run of consecutive tags not in hand; the highest to ack in it."""
        state, tag, last = self._state, self._through + 1, None
        while (mark := state.get(tag)) is not None and mark != _IN_HAND:
            del state[tag]
            if mark == _ACK:
                last = tag
            tag += 1
        self._through = tag - 1
        return last

    async def _send_all(self) -> None:
        try:
            while waiting := self._waiting:
                batch: list[tuple[AbstractIncomingMessage, list[asyncio.Future[None]]]] = []
                last = self._run() if self._tracking else None
                if last is not None:
                    covered = [tag for tag in waiting if tag <= last]
                    batch.append((waiting[last][0], [waiting.pop(tag)[1] for tag in covered]))
                # Past a delivery still in hand: one by one, none waits for a slow one.
                for tag in list(waiting):
                    message, future = waiting.pop(tag)
                    if self._tracking:
                        self._state[tag] = _SETTLED
                    batch.append((message, [future]))
                if len(self._state) > _TRACK_AT_MOST:
                    self._tracking = False
                    self._state.clear()
                for message, futures in batch:
                    await self._send(message, futures, multiple=len(futures) > 1)
        finally:
            self._sender = None

    @staticmethod
    async def _send(
        message: AbstractIncomingMessage, futures: list[asyncio.Future[None]], *, multiple: bool
    ) -> None:
        try:
            await message.ack(multiple=multiple)
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future in futures:
            if not future.done():
                future.set_result(None)


class _AmqpDelivery:
    def __init__(self, message: AbstractIncomingMessage, bus: AmqpBus, acks: _Acks) -> None:
        self._message = message
        self._bus = bus
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
        await self._bus.republish(
            self._message,
            RETRY_EXCHANGE,
            retry_routing_key(self._message.routing_key or "", delay),
            headers,
        )
        await self.ack()

    async def dead_letter(self, reason: str) -> None:
        # Republished rather than rejected, so the reason travels with the message; if the
        # broker will not take it, a plain reject still dead-letters it (reason: "rejected").
        headers = {**(self._message.headers or {}), ERROR_HEADER: reason[:1000]}
        headers["x-triggers-queue"] = self._message.routing_key or ""
        headers["x-triggers-dead-at"] = utcnow().isoformat()
        headers["x-triggers-attempts"] = self.attempt
        headers.pop("x-delivery-count", None)
        try:
            await self._bus.republish(
                self._message, DEAD_EXCHANGE, self._message.routing_key or "", headers
            )
        except BrokerUnavailable:
            await self._reject(requeue=False)
            return
        await self.ack()


class AmqpBus:
    """RabbitMQ through one robust connection per process.

    Publishing uses one channel with publisher confirms, persistent messages,
    ``mandatory=True`` and ``on_return_raises=True``: an unroutable command is an error,
    never a silent success. Each consumer gets its own channel and prefetch.

    `url` may list a cluster's nodes, comma-separated (`BrokerNodes`): the connection is
    made to one of them, and a reconnect moves to the next one that answers; channels,
    queues and consumers are restored there. A publish in flight when its node dies is
    never confirmed: it raises `BrokerUnavailable` (the gateway's 503), never succeeds.
    """

    name = "rabbitmq"

    def __init__(
        self,
        url: str,
        *,
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        role: str = "triggers",
        retry_delays: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0),
        replication: Replication = Replication(),  # noqa: B008 - frozen, safe to share
        shuffle: bool = True,
        reconnect_interval: float = 1.0,
    ) -> None:
        self._url = url
        self._nodes = BrokerNodes(url, shuffle=shuffle)
        self._replication = replication
        self._reconnect_interval = reconnect_interval
        self._retry_delays = retry_delays
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._role = role
        self._connection: AbstractRobustConnection | None = None
        self._topology: Topology | None = None
        # The confirm channel every exchange of the topology was declared on.
        self._publisher: AbstractChannel | None = None
        self._consumers: list[_Consumer] = []
        self._consume_with: tuple[DeliveryHandler, int] | None = None
        self._channels: list[AbstractChannel] = []
        self._event_consumers: list[_Consumer] = []
        self._connector: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        # False from a connection loss until the robust connection has restored every
        # channel, queue and consumer: `connected` alone comes back before that.
        self._restored = False
        self._closing = False

    @classmethod
    def from_settings(cls, settings: Settings, role: str, **overrides: Any) -> AmqpBus:
        """The bus a process of this `role` uses, configured from the settings."""
        options: dict[str, Any] = {
            "publish_timeout": settings.publish_timeout,
            "retry_delays": settings.retry_delays,
            "role": role,
            "replication": Replication(settings.quorum_group_size, settings.queue_leader_locator),
        }
        options.update(overrides)
        return cls(settings.amqp_url, **options)

    @property
    def ready(self) -> bool:
        """Connected now, with channels and consumers restored after any reconnect."""
        return (
            self._topology is not None
            and self._connection is not None
            and self._restored
            and self._connection.connected.is_set()
        )

    @property
    def node(self) -> str | None:
        """The node ("host:port") this process is connected to, while it is."""
        return self._nodes.current if self.ready else None

    async def start(self) -> None:
        """Connect now; raise `BrokerUnavailable` if no node can be reached."""
        connection = CoalescingConnection(
            self._nodes.url,
            nodes=self._nodes,
            reconnect_interval=self._reconnect_interval,
            client_properties={
                "connection_name": f"{self._role}@{socket.gethostname()}:{os.getpid()}"
            },
        )
        try:
            await connection.connect(timeout=self._connect_timeout)
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._topology = await declare(channel, self._retry_delays, self._replication)
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS, TimeoutError):
                await connection.close()
            msg = f"cannot reach RabbitMQ at {redact(self._url)}: {exc!r}"
            raise BrokerUnavailable(msg) from exc
        self._publisher = channel
        self._connection = connection
        self._restored = True
        connection.close_callbacks.add(self._on_lost)
        connection.reconnect_callbacks.add(self._on_restored)
        self._started.set()
        log.info("bus.connected", node=self._nodes.current, role=self._role)

    def _on_lost(self, _: object = None, error: BaseException | None = None) -> None:
        # Also called when a reconnect attempt fails half-way (restoring the channels).
        if self._closing:
            return
        if self._restored:
            log.warning(
                "bus.disconnected",
                node=self._nodes.current,
                role=self._role,
                error=_describe(error),
                retry_in=self._reconnect_interval,
            )
        else:  # one line per failed attempt, whichever node it tried
            log.warning(
                "bus.reconnect_failed",
                role=self._role,
                error=_describe(error),
                retry_in=self._reconnect_interval,
            )
        self._restored = False

    def _on_restored(self, *_: object) -> None:
        self._restored = True
        log.info("bus.reconnected", node=self._nodes.current, role=self._role)

    async def wait_started(self) -> None:
        """Return once the first connection is up (reconnects are the robust connection's)."""
        await self._started.wait()

    def start_in_background(self, retry_every: float = 2.0) -> None:
        """Keep trying to connect until it works; meanwhile `ready` is false."""

        async def connect_forever() -> None:
            while self._connection is None:
                try:
                    await self.start()
                except BrokerUnavailable as exc:
                    log.warning("bus.unreachable", error=str(exc), retry_in=retry_every)
                    await asyncio.sleep(retry_every)

        self._connector = asyncio.create_task(connect_forever())

    def _require_topology(self) -> Topology:
        if not self.ready or self._topology is None:
            msg = "not connected to RabbitMQ"
            raise BrokerUnavailable(msg)
        return self._topology

    async def _publish(
        self,
        exchange: AbstractExchange,
        body: bytes,
        properties: spec.Basic.Properties,
        key: str,
        *,
        mandatory: bool,
        kind: str,
    ) -> None:
        # Straight to the channel underneath aio-pika's exchange (what `Exchange.publish`
        # calls), with the properties built once and without waiting for the socket write:
        # the confirm that is awaited comes after it anyway. Returns, nacks and channel
        # errors raise exactly as through `Exchange.publish`.
        if self._publisher is None:
            msg = "not connected to RabbitMQ"
            raise BrokerUnavailable(msg)
        started = time.perf_counter()
        try:
            channel = cast("aiormq.Channel", await self._publisher.get_underlay_channel())
            await channel.basic_publish(
                body,
                exchange=exchange.name,
                routing_key=key,
                properties=properties,
                mandatory=mandatory,
                timeout=self._publish_timeout,
                wait=False,
            )
            PUBLISH_SECONDS.labels(kind).observe(time.perf_counter() - started)
        except TimeoutError as exc:
            msg = f"RabbitMQ did not confirm within {self._publish_timeout:g}s"
            raise BrokerUnavailable(msg) from exc
        except CONNECTION_EXCEPTIONS as exc:
            msg = f"RabbitMQ refused or lost the message: {type(exc).__name__}"
            raise BrokerUnavailable(msg) from exc
        except asyncio.CancelledError as exc:
            # aiormq cancels the confirm of a connection it gives up on (a node that stopped
            # answering heartbeats): unconfirmed, so unavailable, unless we are cancelled.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            msg = "RabbitMQ connection lost before the confirm"
            raise BrokerUnavailable(msg) from exc

    async def publish_command(self, envelope: CommandEnvelope) -> None:
        """Publish persistently to the action's queue; returns once the broker confirmed."""
        topology = self._require_topology()
        properties = _properties(
            COMMAND_CONTENT_TYPE, envelope.job_id, envelope.correlation_id, envelope.issued_at
        )
        await self._publish(
            topology.commands,
            encode(envelope),
            properties,
            envelope.action,
            mandatory=True,
            kind="command",
        )

    async def publish_result(self, event: ResultEvent, *, cc: str | None = None) -> None:
        """Publish a result event; not mandatory, since nobody may be listening.

        `cc`: one more routing key (RabbitMQ's CC header), the waiting gateway's own.
        """
        topology = self._require_topology()
        await self._publish_event(
            topology.results, event, RESULT_CONTENT_TYPE, event.finished_at, cc=cc
        )

    async def publish_notice(self, notice: JobNotice) -> None:
        """Publish a progress notice on `triggers.progress`; not mandatory either."""
        topology = self._require_topology()
        await self._publish_event(topology.progress, notice, NOTICE_CONTENT_TYPE, notice.at)

    async def _publish_event(
        self,
        exchange: AbstractExchange,
        event: ResultEvent | JobNotice,
        content_type: str,
        timestamp: datetime,
        cc: str | None = None,
    ) -> None:
        properties = _properties(
            content_type,
            event.job_id,
            event.correlation_id,
            timestamp,
            headers={"CC": [cc]} if cc else None,
        )
        key = result_routing_key(event.status, event.action, event.cluster, event.app)
        kind = "result" if isinstance(event, ResultEvent) else "notice"
        await self._publish(exchange, encode(event), properties, key, mandatory=False, kind=kind)

    async def republish(
        self,
        message: AbstractIncomingMessage,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
    ) -> None:
        """Publish a copy of a delivered message (confirmed, persistent, mandatory)."""
        topology = self._require_topology()
        target = {
            RETRY_EXCHANGE: topology.retry,
            DEAD_EXCHANGE: topology.dead,
            COMMANDS_EXCHANGE: topology.commands,
        }[exchange]
        kind = {RETRY_EXCHANGE: "retry", DEAD_EXCHANGE: "dead_letter"}.get(exchange, "command")
        copy = copy_message(message, headers)
        await self._publish(
            target, copy.body, copy.properties, routing_key, mandatory=True, kind=kind
        )

    async def consume_commands(self, handler: DeliveryHandler, *, prefetch: int) -> None:
        """A channel per command queue, each with its own prefetch."""
        if self._connection is None:
            msg = "start() the bus before consuming"
            raise BrokerUnavailable(msg)
        self._consume_with = (handler, prefetch)
        for name in COMMAND_QUEUES.values():
            await self._consume(name)

    async def _consume(self, name: str) -> None:
        assert self._connection is not None  # noqa: S101 - callers checked
        handler, prefetch = self._consume_with or (None, 0)
        assert handler is not None  # noqa: S101 - set by consume_commands
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        # Declared on this channel so the robust channel re-declares it on reconnect, with
        # the arguments the topology found to work.
        arguments = self._topology.arguments.get(name) if self._topology else None
        queue: AbstractQueue
        if arguments is not None:
            queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        else:
            queue = await declare_queue(channel, name, COMMAND_QUEUE_ARGUMENTS, self._replication)
        tag = await queue.consume(self._deliveries_to(handler))
        self._consumers.append(_Consumer(name, channel, queue, tag))

    def _deliveries_to(
        self, handler: DeliveryHandler
    ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        """A consumer callback handing each message to `handler`, acks batched per channel."""
        acks = _Acks(None)

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal acks
            if acks.channel is not message.channel:  # a new channel after a reconnect
                acks = _Acks(message.channel)
            if message.delivery_tag is not None:
                acks.delivered(message.delivery_tag)
            await handler(_AmqpDelivery(message, self, acks))

        return on_message

    async def check_consumers(self) -> list[str]:
        """Verify every command queue still has our consumer; re-create those that do not.

        Robust connections restore consumers after a reconnect, but not always (aio-pika
        #231, #626): a closed channel, or a queue whose consumer count says nobody listens,
        gets a new channel and consumer. Returns the queues restored.
        """
        if not self.ready or self._consume_with is None or self._topology is None:
            return []
        assert self._connection is not None  # noqa: S101 - ready implies connected
        restored = []
        counts: dict[str, int] = {}
        # A channel of its own: a failed passive declare closes the channel it ran on.
        probe = await self._connection.channel(publisher_confirms=False)
        try:
            for consumer in self._consumers:
                declared = await probe.declare_queue(consumer.name, passive=True)
                counts[consumer.name] = declared.declaration_result.consumer_count or 0
        finally:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await probe.close()
        for consumer in list(self._consumers):
            if not consumer.channel.is_closed and counts.get(consumer.name, 0) > 0:
                continue
            self._consumers.remove(consumer)
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await consumer.channel.close()
            await self._consume(consumer.name)
            restored.append(consumer.name)
        return restored

    async def consume_job_events(self, handler: DeliveryHandler, *, prefetch: int) -> None:
        """Consume `triggers.results.recorder` (declared here) on a channel of its own."""
        if self._connection is None:
            msg = "start() the bus before consuming"
            raise BrokerUnavailable(msg)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await declare_recorder_queue(channel, self._replication)
        tag = await queue.consume(self._deliveries_to(handler))
        # Kept apart from the command consumers, which check_consumers re-creates as such.
        self._event_consumers.append(_Consumer(queue.name, channel, queue, tag))

    async def stop_consuming(self) -> None:
        """Cancel the consumers; unsettled deliveries can still be acked."""
        self._consume_with = None
        for consumer in [*self._consumers, *self._event_consumers]:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await consumer.queue.cancel(consumer.tag)
        self._consumers.clear()
        self._event_consumers.clear()

    async def subscribe_results(self, handler: ResultHandler, *, binding: str = "#") -> None:
        """An exclusive, auto-deleted queue bound to `triggers.results`."""
        if self._connection is None:
            msg = "start() the bus before subscribing"
            raise BrokerUnavailable(msg)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=256)
        # Named under `triggers.` (the deploy's broker user may configure only those) and
        # after its owner, so the broker's queue list says whose it is.
        name = f"triggers.results.{self._role}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
        await queue.bind(RESULTS_EXCHANGE, routing_key=binding)

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with message.process(ignore_processed=True):
                try:
                    event = decode_result(message.body)
                except ValueError:
                    log.warning("bus.bad_result", message_id=message.message_id)
                    return
                await handler(event)

        await queue.consume(on_message)
        self._channels.append(channel)

    async def queue_depths(self) -> dict[str, int]:
        """Messages ready in the command, dead-letter and (if declared) recorder queues.

        Passive declares on a channel of their own: a failed one closes its channel, and
        the recorder's queue exists only once a recorder ran.
        """
        topology = self._require_topology()
        assert self._connection is not None  # noqa: S101 - ready implies connected
        names = [q.name for q in (*topology.command_queues.values(), topology.dead_queue)]
        depths: dict[str, int] = {}
        probe = await self._connection.channel(publisher_confirms=False)
        try:
            for name in [*names, RECORDER_QUEUE]:
                try:
                    declared = await probe.declare_queue(name, passive=True)
                except aio_pika.exceptions.ChannelClosed:
                    break  # only the last one may be missing
                depths[name] = declared.declaration_result.message_count or 0
        finally:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await probe.close()
        return depths

    async def close(self) -> None:
        """Stop reconnecting and close the connection."""
        self._closing = True
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        await self.stop_consuming()
        if self._connection is not None:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await self._connection.close()
        self._connection = None
        self._topology = None


def _describe(error: BaseException | None) -> str:
    """One line for a lost connection: the exception's type and text, no traceback."""
    if error is None:
        return "connection closed"
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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


def _topic_matches(binding: str, key: str) -> bool:
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

    def __init__(self) -> None:
        self._queues: dict[Action, asyncio.Queue[tuple[bytes, int]]] = {
            action: asyncio.Queue() for action in COMMAND_QUEUES
        }
        self._subscribers: list[tuple[str, ResultHandler]] = []
        self._recorders: list[DeliveryHandler] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.dead: list[tuple[bytes, str]] = []

    @property
    def ready(self) -> bool:
        """Always: the queues live in this process."""
        return True

    async def start(self) -> None:
        """Nothing to connect to."""

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
            if any(_topic_matches(binding, key) for key in keys):
                await handler(event)
        await self._record(encode(event))

    async def publish_notice(self, notice: JobNotice) -> None:
        """Hand the notice to the recorder, if one consumes."""
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

    async def subscribe_results(self, handler: ResultHandler, *, binding: str = "#") -> None:
        """Register a subscriber."""
        self._subscribers.append((binding, handler))

    async def close(self) -> None:
        """Stop the pumps."""
        await self.stop_consuming()
