"""The dead-letter queue: see why each message died, send it back, or drop it.

Replaying is safe: a command keeps its job id, so one that was already applied changes
nothing (the worker reports it as a duplicate).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from shared.amqp_transport import connect_any, redact
from shared.api import DeadMessage
from shared.broker import (
    ATTEMPT_HEADER,
    ATTEMPTS_HEADER,
    DEAD_AT_HEADER,
    ERROR_HEADER,
    QUEUE_HEADER,
    copy_message,
)
from shared.errors import BrokerUnavailable
from shared.messages import (
    Action,
    CommandEnvelope,
    NotificationDelivery,
    Target,
    decode_command,
    decode_delivery,
    encode,
)
from shared.settings import Settings
from shared.topology import (
    COMMANDS_EXCHANGE,
    NOTIFY_ROUTING_KEY,
    Replication,
    declare,
    declare_notifier_topology,
)

__all__ = ["list_dead", "purge_dead", "replay_dead"]


def _reason(message: AbstractIncomingMessage) -> str:
    headers = message.headers or {}
    if isinstance(error := headers.get(ERROR_HEADER), str | bytes):
        return error.decode() if isinstance(error, bytes) else error
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        reason = deaths[0].get("reason", "unknown")
        if isinstance(reason, bytes):
            reason = reason.decode()
        if reason == "delivery_limit":
            return "delivery limit reached: every delivery failed or its worker died"
        return f"dead-lettered by RabbitMQ: {reason}"
    return "unknown"


def _decode(message: AbstractIncomingMessage) -> CommandEnvelope | None:
    try:
        return decode_command(message.body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _delivery(message: AbstractIncomingMessage) -> NotificationDelivery | None:
    try:
        return decode_delivery(message.body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _notification_target(message: AbstractIncomingMessage) -> tuple[Action, Target] | None:
    """The action and target of a dead notification delivery (the notifier's), if it is one."""
    delivery = _delivery(message)
    if delivery is None:
        return None
    event = delivery.result or delivery.notice
    if event is None:
        return None
    return event.action, Target(cluster=event.cluster, app=event.app, service=event.service)


def _message_id(message: AbstractIncomingMessage) -> str:
    return message.message_id or f"tag-{message.delivery_tag}"


def describe(message: AbstractIncomingMessage) -> DeadMessage:
    """What a dead message is and why it died."""
    headers = message.headers or {}
    envelope = _decode(message)
    died = headers.get(DEAD_AT_HEADER)
    attempts = headers.get(ATTEMPTS_HEADER)
    if isinstance(died, datetime):
        died = died.isoformat()
    action, target = (envelope.action, envelope.target) if envelope else (None, None)
    if envelope is None and (notification := _notification_target(message)) is not None:
        action, target = notification
    return DeadMessage(
        id=_message_id(message),
        reason=_reason(message),
        queue=str(headers.get(QUEUE_HEADER) or message.routing_key or "") or None,
        died_at=died if isinstance(died, str) else None,
        attempts=attempts if isinstance(attempts, int) else None,
        action=action,
        cluster=target.cluster if target else None,
        app=target.app if target else None,
        service=target.service if target else None,
        replayable=envelope is not None or _delivery(message) is not None,
        size=len(message.body),
    )


@contextlib.asynccontextmanager
async def _dead_queue(settings: Settings) -> AsyncIterator[tuple[AbstractChannel, AbstractQueue]]:
    try:
        connection = await connect_any(settings.amqp_url)
    except CONNECTION_EXCEPTIONS as exc:
        msg = f"cannot reach RabbitMQ at {redact(settings.amqp_url)}: {exc}"
        raise BrokerUnavailable(msg) from None
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        replication = Replication.of(settings)
        topology = await declare(channel, settings.retry_delays, replication)
        yield channel, topology.dead_queue


async def _drain(queue: AbstractQueue, limit: int) -> list[AbstractIncomingMessage]:
    """Take up to `limit` messages without settling them (basic.get)."""
    taken: list[AbstractIncomingMessage] = []
    while len(taken) < limit:
        message = await queue.get(no_ack=False, fail=False, timeout=5)
        if message is None:
            break
        taken.append(message)
    return taken


async def list_dead(settings: Settings, limit: int = 100) -> list[DeadMessage]:
    """Up to `limit` dead messages, oldest first; they stay in the queue."""
    async with _dead_queue(settings) as (channel, queue):
        taken = await _drain(queue, limit)
        described = [describe(m) for m in taken]
        # Closing the channel returns every unsettled message, in order.
        await channel.close()
    return described


async def replay_dead(
    settings: Settings, ids: set[str] | None = None, limit: int = 10_000
) -> dict[str, Any]:
    """Send dead commands back to their queue (all, or those whose id is in `ids`), and dead
    notifications back to the notifier as a first attempt.

    Each is published with confirms before its dead copy is acked, so a crash in between
    leaves a duplicate (absorbed by the job ledger), never a loss. Undecodable messages
    stay where they are.
    """
    replayed: list[str] = []
    kept: list[str] = []
    async with _dead_queue(settings) as (channel, queue):
        commands = await channel.get_exchange(COMMANDS_EXCHANGE, ensure=False)
        for message in await _drain(queue, limit):
            wanted = ids is None or _message_id(message) in ids
            envelope = _decode(message) if wanted else None
            delivery = _delivery(message) if wanted and envelope is None else None
            if delivery is not None:
                await _replay_notification(channel, settings, message, delivery)
                replayed.append(_message_id(message))
                continue
            if envelope is None:
                kept.append(_message_id(message))
                continue
            headers = {
                k: v
                for k, v in (message.headers or {}).items()
                if not k.startswith(("x-triggers-", "x-death", "x-first-death", "x-last-death"))
            }
            headers["x-triggers-replayed"] = True
            await commands.publish(
                copy_message(message, {**headers, ATTEMPT_HEADER: 1}),
                routing_key=envelope.action,
                mandatory=True,
            )
            await message.ack()
            replayed.append(_message_id(message))
        await channel.close()
    missing = sorted((ids or set()) - set(replayed) - set(kept)) if ids else []
    return {"replayed": replayed, "kept": kept, "not_found": missing}


async def _replay_notification(
    channel: AbstractChannel,
    settings: Settings,
    message: AbstractIncomingMessage,
    delivery: NotificationDelivery,
) -> None:
    """Back to the notifier's queue (declared here, so it waits for a notifier) as attempt 1."""
    replication = Replication.of(settings)
    topology = await declare_notifier_topology(channel, settings.notify_retry_delays, replication)
    fresh = aio_pika.Message(
        body=encode(msgspec.structs.replace(delivery, attempt=1)),
        content_type=message.content_type,
        type=message.type,
        message_id=message.message_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers={"x-triggers-replayed": True},
    )
    await topology.notify.publish(fresh, routing_key=NOTIFY_ROUTING_KEY, mandatory=True)
    await message.ack()


async def purge_dead(settings: Settings) -> int:
    """Drop every dead message; returns how many."""
    async with _dead_queue(settings) as (_, queue):
        result = await queue.purge()
        return int(result.message_count or 0)
