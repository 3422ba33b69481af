"""Result subscription: an exclusive queue bound to `triggers.results` by a topic key (and
to `triggers.progress` for a subscriber that wants the `running` notices too)."""

from __future__ import annotations

import os
import socket
import uuid

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from shared.broker._protocol import NoticeHandler, ResultHandler
from shared.messages import JobNotice, decode_job_event, decode_result
from shared.topology import PROGRESS_EXCHANGE, RESULTS_EXCHANGE

__all__ = ["subscribe_results"]

log = structlog.get_logger("triggers.bus")


async def subscribe_results(
    connection: AbstractRobustConnection,
    role: str,
    handler: ResultHandler,
    binding: str,
    *,
    notices: NoticeHandler | None = None,
) -> AbstractChannel:
    """An exclusive, auto-deleted queue bound to `triggers.results` (and to
    `triggers.progress` when `notices` takes the notices); its channel."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=256)
    # Named under `triggers.` (the deploy's broker user may configure only those) and
    # after its owner, so the broker's queue list says whose it is.
    name = f"triggers.results.{role}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
    await queue.bind(RESULTS_EXCHANGE, routing_key=binding)
    if notices is not None:
        await queue.bind(PROGRESS_EXCHANGE, routing_key=binding)

    async def on_message(message: AbstractIncomingMessage) -> None:
        async with message.process(ignore_processed=True):
            try:
                event = (
                    decode_result(message.body)
                    if notices is None
                    else decode_job_event(message.body)
                )
            except ValueError:
                log.warning("bus.bad_result", message_id=message.message_id)
                return
            if isinstance(event, JobNotice):
                if notices is not None:
                    await notices(event)
                return
            await handler(event)

    await queue.consume(on_message)
    return channel
