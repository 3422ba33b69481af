"""The transport behind a small interface: RabbitMQ in production, in-process for `dev`.

Handlers never import the transport; they get a `Delivery` and decide ack, requeue or
dead-letter through it. Callers use `Bus` only; which implementation runs is the
composition root's choice.
"""

from __future__ import annotations

from shared.broker._amqp import AmqpBus
from shared.broker._memory import MemoryBus
from shared.broker._protocol import (
    Bus,
    Delivery,
    DeliveryHandler,
    NoticeHandler,
    ResultHandler,
    ready_within,
)
from shared.broker._publisher import (
    ATTEMPT_HEADER,
    ATTEMPTS_HEADER,
    DEAD_AT_HEADER,
    ERROR_HEADER,
    QUEUE_HEADER,
    copy_message,
    dead_letter_headers,
)

__all__ = [
    "ATTEMPTS_HEADER",
    "ATTEMPT_HEADER",
    "DEAD_AT_HEADER",
    "ERROR_HEADER",
    "QUEUE_HEADER",
    "AmqpBus",
    "Bus",
    "Delivery",
    "DeliveryHandler",
    "MemoryBus",
    "NoticeHandler",
    "ResultHandler",
    "copy_message",
    "dead_letter_headers",
    "ready_within",
]
