"""AMQP publishing: one confirm channel, persistent messages, every publish confirmed."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq import spec

from shared.errors import BrokerUnavailable
from shared.messages import (
    COMMAND_CONTENT_TYPE,
    NOTICE_CONTENT_TYPE,
    RESULT_CONTENT_TYPE,
    CommandEnvelope,
    JobNotice,
    ResultEvent,
    encode,
    utcnow,
)
from shared.metrics import PUBLISH_SECONDS, labelled
from shared.topology import (
    COMMANDS_EXCHANGE,
    DEAD_EXCHANGE,
    RETRY_EXCHANGE,
    Topology,
    result_routing_key,
)

__all__ = [
    "ATTEMPTS_HEADER",
    "ATTEMPT_HEADER",
    "DEAD_AT_HEADER",
    "ERROR_HEADER",
    "QUEUE_HEADER",
    "Publisher",
    "copy_message",
    "dead_letter_headers",
]

ATTEMPT_HEADER = "x-triggers-attempt"
ERROR_HEADER = "x-triggers-error"
# Beside a dead letter: the queue it died in, when, after how many attempts.
QUEUE_HEADER = "x-triggers-queue"
DEAD_AT_HEADER = "x-triggers-dead-at"
ATTEMPTS_HEADER = "x-triggers-attempts"

_PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


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


def dead_letter_headers(
    message: AbstractIncomingMessage, reason: str, *, attempts: int, queue: str
) -> dict[str, Any]:
    """The headers of a dead letter: the message's own, and why, where, when it died."""
    headers = {**(message.headers or {}), ERROR_HEADER: reason[:1000]}
    headers[QUEUE_HEADER] = queue
    headers[DEAD_AT_HEADER] = utcnow().isoformat()
    headers[ATTEMPTS_HEADER] = attempts
    # The broker's redelivery count belongs to the old message, not to its copy.
    headers.pop("x-delivery-count", None)
    return headers


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


class Publisher:
    """Publishes on the confirm channel every exchange of `topology` was declared on.

    ``mandatory=True`` with ``on_return_raises=True`` on the channel: an unroutable
    command is an error, never a silent success.
    """

    def __init__(self, channel: AbstractChannel, topology: Topology, timeout: float) -> None:
        self._channel = channel
        self._topology = topology
        self._timeout = timeout

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
        started = time.perf_counter()
        try:
            channel = cast("aiormq.Channel", await self._channel.get_underlay_channel())
            await channel.basic_publish(
                body,
                exchange=exchange.name,
                routing_key=key,
                properties=properties,
                mandatory=mandatory,
                timeout=self._timeout,
                wait=False,
            )
            labelled(PUBLISH_SECONDS, kind).observe(time.perf_counter() - started)
        except TimeoutError as exc:
            msg = f"RabbitMQ did not confirm within {self._timeout:g}s"
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

    async def command(self, envelope: CommandEnvelope) -> None:
        """Publish persistently to the action's queue; returns once the broker confirmed."""
        properties = _properties(
            COMMAND_CONTENT_TYPE, envelope.job_id, envelope.correlation_id, envelope.issued_at
        )
        await self._publish(
            self._topology.commands,
            encode(envelope),
            properties,
            envelope.action,
            mandatory=True,
            kind="command",
        )

    async def result(self, event: ResultEvent, cc: str | None) -> None:
        """A result event; not mandatory, since nobody may be listening; `cc`: one more key."""
        await self._event(
            self._topology.results, event, RESULT_CONTENT_TYPE, event.finished_at, cc=cc
        )

    async def notice(self, notice: JobNotice) -> None:
        """A progress notice on `triggers.progress`; not mandatory either."""
        await self._event(self._topology.progress, notice, NOTICE_CONTENT_TYPE, notice.at)

    async def _event(
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
        topology = self._topology
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
