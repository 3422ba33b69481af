"""`AmqpBus`: RabbitMQ through one robust connection per process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from shared.amqp_transport import BrokerNodes, CoalescingConnection, redact
from shared.broker._admin import read_queue_depths
from shared.broker._consumer import Consumers
from shared.broker._protocol import DeliveryHandler, NoticeHandler, ResultHandler
from shared.broker._publisher import Publisher
from shared.broker._results import subscribe_results
from shared.errors import BrokerUnavailable
from shared.messages import CommandEnvelope, JobNotice, ResultEvent
from shared.settings import Settings
from shared.topology import Replication, Topology, declare

__all__ = ["AmqpBus"]

log = structlog.get_logger("triggers.bus")


def _describe(error: BaseException | None) -> str:
    """One line for a lost connection: the exception's type and text, no traceback."""
    if error is None:
        return "connection closed"
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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
    durable = True

    def __init__(
        self,
        url: str,
        *,
        publish_timeout: float = Settings.publish_timeout,
        connect_timeout: float = 5.0,
        role: str = "triggers",
        retry_delays: tuple[float, ...] = Settings.retry_delays,
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
        self._publisher: Publisher | None = None
        self._consumers: Consumers | None = None
        self._channels: list[AbstractChannel] = []
        self._connector: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        # False from a connection loss until the robust connection has restored every
        # channel, queue and consumer: `connected` alone comes back before that.
        self._restored = False
        self._closing = False
        self._disconnects = 0

    @classmethod
    def from_settings(cls, settings: Settings, role: str, **overrides: Any) -> AmqpBus:
        """The bus a process of this `role` uses, configured from the settings."""
        options: dict[str, Any] = {
            "publish_timeout": settings.publish_timeout,
            "retry_delays": settings.retry_delays,
            "role": role,
            "replication": Replication.of(settings),
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

    @property
    def disconnects(self) -> int:
        """Connections lost so far (a failed reconnect attempt is not another one)."""
        return self._disconnects

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
            topology = await declare(channel, self._retry_delays, self._replication)
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS, TimeoutError):
                await connection.close()
            msg = f"cannot reach RabbitMQ at {redact(self._url)}: {exc!r}"
            raise BrokerUnavailable(msg) from exc
        self._topology = topology
        # The confirm channel every exchange of the topology was declared on.
        self._publisher = Publisher(channel, topology, self._publish_timeout)
        self._consumers = Consumers(
            connection, self.republish, self._replication, topology.arguments
        )
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
            self._disconnects += 1
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

    def _ready_publisher(self) -> Publisher:
        if not self.ready or self._publisher is None:
            msg = "not connected to RabbitMQ"
            raise BrokerUnavailable(msg)
        return self._publisher

    def _started_consumers(self, what: str) -> Consumers:
        if self._connection is None or self._consumers is None:
            msg = f"start() the bus before {what}"
            raise BrokerUnavailable(msg)
        return self._consumers

    async def publish_command(self, envelope: CommandEnvelope) -> None:
        """Publish persistently to the action's queue; returns once the broker confirmed."""
        await self._ready_publisher().command(envelope)

    async def publish_result(self, event: ResultEvent, *, cc: str | None = None) -> None:
        """Publish a result event; not mandatory, since nobody may be listening.

        `cc`: one more routing key (RabbitMQ's CC header), the waiting gateway's own.
        """
        await self._ready_publisher().result(event, cc)

    async def publish_notice(self, notice: JobNotice) -> None:
        """Publish a progress notice on `triggers.progress`; not mandatory either."""
        await self._ready_publisher().notice(notice)

    async def republish(
        self,
        message: AbstractIncomingMessage,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
    ) -> None:
        """Publish a copy of a delivered message (confirmed, persistent, mandatory)."""
        await self._ready_publisher().republish(message, exchange, routing_key, headers)

    async def consume_commands(self, handler: DeliveryHandler, *, prefetch: int) -> None:
        """A channel per command queue, each with its own prefetch."""
        await self._started_consumers("consuming").commands(handler, prefetch)

    async def check_consumers(self) -> list[str]:
        """Verify every command queue still has our consumer; re-create those that do not.

        Robust connections restore consumers after a reconnect, but not always (aio-pika
        #231, #626). Returns the queues restored.
        """
        if not self.ready or self._consumers is None or not self._consumers.consuming:
            return []
        return await self._consumers.check()

    async def consume_job_events(self, handler: DeliveryHandler, *, prefetch: int) -> None:
        """Consume `triggers.results.recorder` (declared here) on a channel of its own."""
        await self._started_consumers("consuming").job_events(handler, prefetch)

    async def stop_consuming(self) -> None:
        """Cancel the consumers; unsettled deliveries can still be acked."""
        if self._consumers is not None:
            await self._consumers.stop()

    async def subscribe_results(
        self, handler: ResultHandler, *, binding: str = "#", notices: NoticeHandler | None = None
    ) -> None:
        """An exclusive, auto-deleted queue bound to `triggers.results` (and, with
        `notices`, to `triggers.progress`: one queue keeps a job's events in order)."""
        if self._connection is None:
            msg = "start() the bus before subscribing"
            raise BrokerUnavailable(msg)
        channel = await subscribe_results(
            self._connection, self._role, handler, binding, notices=notices
        )
        self._channels.append(channel)

    async def queue_depths(self) -> dict[str, int]:
        """Messages ready in the command, dead-letter and (if declared) recorder queues."""
        if not self.ready or self._topology is None or self._connection is None:
            msg = "not connected to RabbitMQ"
            raise BrokerUnavailable(msg)
        return await read_queue_depths(self._connection, self._topology)

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
