"""Result subscription: an exclusive queue bound to `triggers.results` by a topic key."""

from __future__ import annotations

import os
import socket
import uuid

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from shared.broker._protocol import ResultHandler
from shared.messages import decode_result
from shared.topology import RESULTS_EXCHANGE

__all__ = ["subscribe_results"]

log = structlog.get_logger("triggers.bus")


async def subscribe_results(
    connection: AbstractRobustConnection, role: str, handler: ResultHandler, binding: str
) -> AbstractChannel:
    """An exclusive, auto-deleted queue bound to `triggers.results`; its channel."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=256)
    # Named under `triggers.` (the deploy's broker user may configure only those) and
    # after its owner, so the broker's queue list says whose it is.
    name = f"triggers.results.{role}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
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
    return channel
