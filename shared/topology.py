"""The broker topology, declared in one place; every process calls `declare`.

- ``triggers.commands`` (direct): routing key = action; one quorum queue per action,
  with a delivery limit and at-least-once dead-lettering to ``triggers.dead``.
- ``triggers.dead`` (fanout) -> quorum queue ``triggers.dead``: messages that could not be
  decoded, failed permanently, or exceeded the delivery limit, with the reason in headers.
- ``triggers.retry`` (direct) -> quorum queues ``triggers.retry.<action>.<ms>ms``, one per
  retry delay, whose messages expire back into ``triggers.commands`` with the action as
  routing key: a retry waits in the broker, not in a worker's prefetch window.
- ``triggers.results`` (topic): routing key ``<status>.<action>.<cluster>.<app>``.
- ``triggers.progress`` (topic): job notices before the result (``running.<action>.<cluster>.<app>``).
- ``triggers.results.recorder``: the recorder's durable quorum queue, bound to both with ``#``;
  declared by the recorder only (`declare_recorder_queue`), so a deployment without one
  does not pile up events nobody reads.
- The notifier's, declared by it only (`declare_notifier_topology`): its quorum queue
  ``triggers.results.notifier`` bound to every result and every progress notice;
  ``triggers.notify`` (direct) -> quorum queue ``triggers.notify.deliveries``, one message
  per (result, sink); ``triggers.notify.retry`` (direct) -> quorum queues
  ``triggers.notify.retry.<ms>ms`` whose messages expire back into ``triggers.notify``.
  A delivery out of attempts goes to ``triggers.dead`` with the reason.

Every quorum queue is declared for a cluster (`Replication`): replicated on up to
``TRIGGERS_QUORUM_GROUP_SIZE`` nodes (3) with its leader placed by
``TRIGGERS_QUEUE_LEADER_LOCATOR`` (``balanced``: spread over the nodes). RabbitMQ refuses
to re-declare a queue with other arguments, so a queue declared before these existed
(an upgrade) is used as it is, with one warning saying how to replicate it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from aiormq.exceptions import ChannelPreconditionFailed

from shared.messages import Action
from shared.settings import Settings

__all__ = [
    "COMMANDS_EXCHANGE",
    "COMMAND_QUEUES",
    "DEAD_EXCHANGE",
    "DEAD_QUEUE",
    "DELIVERY_LIMIT",
    "NOTIFIER_QUEUE",
    "NOTIFIER_QUEUE_ARGUMENTS",
    "NOTIFY_DELIVERIES_ARGUMENTS",
    "NOTIFY_DELIVERIES_QUEUE",
    "NOTIFY_EXCHANGE",
    "NOTIFY_RETRY_EXCHANGE",
    "NOTIFY_ROUTING_KEY",
    "PROGRESS_EXCHANGE",
    "RECORDER_QUEUE",
    "RECORDER_QUEUE_ARGUMENTS",
    "RESULTS_EXCHANGE",
    "RETRY_EXCHANGE",
    "NotifierTopology",
    "Replication",
    "Topology",
    "declare",
    "declare_notifier_topology",
    "declare_recorder_queue",
    "notify_retry_key",
    "result_binding",
    "result_routing_key",
    "retry_routing_key",
]

COMMANDS_EXCHANGE = "triggers.commands"
RESULTS_EXCHANGE = "triggers.results"
PROGRESS_EXCHANGE = "triggers.progress"
RECORDER_QUEUE = "triggers.results.recorder"
DEAD_EXCHANGE = "triggers.dead"
DEAD_QUEUE = "triggers.dead"
RETRY_EXCHANGE = "triggers.retry"
NOTIFIER_QUEUE = "triggers.results.notifier"
NOTIFY_EXCHANGE = "triggers.notify"
NOTIFY_DELIVERIES_QUEUE = "triggers.notify.deliveries"
NOTIFY_RETRY_EXCHANGE = "triggers.notify.retry"
NOTIFY_ROUTING_KEY = "delivery"
COMMAND_QUEUES: dict[Action, str] = {
    "redeploy": "triggers.commands.redeploy",
    "scale": "triggers.commands.scale",
}
# Deliveries a command may use before RabbitMQ dead-letters it. A worker killed while
# holding its prefetch window costs each held message one delivery, so this stays well
# above the worker's own retry budget (Settings.max_attempts).
DELIVERY_LIMIT = 20

log = structlog.get_logger("triggers.bus")


@dataclass(frozen=True)
class Replication:
    """How quorum queues are spread over a cluster's nodes.

    `group_size`: nodes holding a replica (``x-quorum-initial-group-size``; RabbitMQ caps
    it at the cluster's size, so 3 also suits one node); 0 leaves it to the broker.
    `leader_locator`: ``balanced`` (leaders spread over the nodes) or ``client-local``
    (on the declaring node); "" leaves it to the broker.
    """

    group_size: int = Settings.quorum_group_size
    leader_locator: str = Settings.queue_leader_locator

    @classmethod
    def of(cls, settings: Settings) -> Replication:
        """The replication the settings ask for."""
        return cls(settings.quorum_group_size, settings.queue_leader_locator)

    def arguments(self) -> dict[str, Any]:
        """The queue arguments that say so."""
        arguments: dict[str, Any] = {}
        if self.group_size:
            arguments["x-quorum-initial-group-size"] = self.group_size
        if self.leader_locator:
            arguments["x-queue-leader-locator"] = self.leader_locator
        return arguments


COMMAND_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": DELIVERY_LIMIT,
    "x-dead-letter-exchange": DEAD_EXCHANGE,
    # at-least-once dead-lettering needs reject-publish overflow; without it a message
    # dead-lettered while the broker is under pressure may be dropped.
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


RECORDER_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": DELIVERY_LIMIT,
    "x-dead-letter-exchange": DEAD_EXCHANGE,
    # Bounded, dropping the oldest: a recorder that is down for long loses old history
    # rather than making result publishes fail (reject-publish would stall every worker).
    "x-max-length": 1_000_000,
    "x-overflow": "drop-head",
}


@dataclass(frozen=True)
class Topology:
    """The declared (robust) objects, so they come back after a reconnect."""

    commands: AbstractExchange
    results: AbstractExchange
    progress: AbstractExchange
    dead: AbstractExchange
    retry: AbstractExchange
    command_queues: dict[Action, AbstractQueue]
    dead_queue: AbstractQueue
    # The arguments each queue was declared with (a consumer channel declares it again).
    arguments: dict[str, dict[str, Any]] = field(default_factory=dict)


def retry_routing_key(action: str, delay: float) -> str:
    """The retry exchange's key (and queue suffix) for one action and delay."""
    return f"{action}.{round(delay * 1000)}ms"


async def declare_queue(
    channel: AbstractChannel,
    name: str,
    arguments: dict[str, Any],
    replication: Replication,
    declared: dict[str, dict[str, Any]] | None = None,
) -> AbstractQueue:
    """A durable quorum queue with `replication`; as it is if it exists without it.

    `declared` (if given) records the arguments that worked, for later declarations.
    """
    wanted = {**arguments, **replication.arguments()}
    try:
        queue = await channel.declare_queue(name, durable=True, arguments=wanted)
    except ChannelPreconditionFailed as exc:
        if not any(key in str(exc) for key in replication.arguments()):
            raise
        log.warning(
            "bus.queue_not_replicated",
            queue=name,
            detail=str(exc),
            hint="declared before TRIGGERS_QUORUM_GROUP_SIZE/TRIGGERS_QUEUE_LEADER_LOCATOR "
            "applied: add members with `rabbitmq-queues grow`, or move its messages and "
            "delete it so it is declared again",
        )
        # The refused declaration closed the channel.
        await channel.reopen()
        wanted = dict(arguments)
        queue = await channel.declare_queue(name, durable=True, arguments=wanted)
    if declared is not None:
        declared[name] = wanted
    return queue


async def declare(
    channel: AbstractChannel,
    retry_delays: tuple[float, ...],
    replication: Replication = Replication(),
) -> Topology:
    """Declare every exchange, queue and binding; idempotent, safe from any process.

    `retry_delays`: the settings' (`Settings.retry_delays`), one retry queue each.
    """
    declared: dict[str, dict[str, Any]] = {}
    commands = await channel.declare_exchange(
        COMMANDS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    results = await channel.declare_exchange(
        RESULTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    progress = await channel.declare_exchange(
        PROGRESS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dead = await channel.declare_exchange(DEAD_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    dead_queue = await declare_queue(
        channel, DEAD_QUEUE, {"x-queue-type": "quorum"}, replication, declared
    )
    await dead_queue.bind(dead, routing_key="")
    queues: dict[Action, AbstractQueue] = {}
    for action, name in COMMAND_QUEUES.items():
        queue = await declare_queue(channel, name, COMMAND_QUEUE_ARGUMENTS, replication, declared)
        await queue.bind(commands, routing_key=action)
        queues[action] = queue
    retry = await channel.declare_exchange(
        RETRY_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for action in COMMAND_QUEUES:
        for delay in retry_delays:
            key = retry_routing_key(action, delay)
            waiting = await declare_queue(
                channel,
                f"{RETRY_EXCHANGE}.{key}",
                {
                    "x-queue-type": "quorum",
                    "x-message-ttl": round(delay * 1000),
                    "x-dead-letter-exchange": COMMANDS_EXCHANGE,
                    "x-dead-letter-routing-key": action,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
                replication,
                declared,
            )
            await waiting.bind(retry, routing_key=key)
    return Topology(
        commands=commands,
        results=results,
        progress=progress,
        dead=dead,
        retry=retry,
        command_queues=queues,
        dead_queue=dead_queue,
        arguments=declared,
    )


async def declare_recorder_queue(
    channel: AbstractChannel,
    replication: Replication = Replication(),
) -> AbstractQueue:
    """The recorder's queue, bound to every result and every progress notice."""
    queue = await declare_queue(channel, RECORDER_QUEUE, RECORDER_QUEUE_ARGUMENTS, replication)
    await queue.bind(RESULTS_EXCHANGE, routing_key="#")
    await queue.bind(PROGRESS_EXCHANGE, routing_key="#")
    return queue


# The notifier's queues: like the recorder's, bounded and dropping the oldest rather than
# refusing results (reject-publish would stall every worker while the notifier is down).
NOTIFIER_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": DELIVERY_LIMIT,
    "x-dead-letter-exchange": DEAD_EXCHANGE,
    "x-max-length": 1_000_000,
    "x-overflow": "drop-head",
}
# Deliveries are published by the notifier itself (confirmed before the result is acked),
# so here refusing is right: the result stays unacked and is tried again.
NOTIFY_DELIVERIES_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": DELIVERY_LIMIT,
    "x-dead-letter-exchange": DEAD_EXCHANGE,
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


@dataclass(frozen=True)
class NotifierTopology:
    """The notifier's exchanges and queues."""

    results: AbstractQueue
    deliveries: AbstractQueue
    notify: AbstractExchange
    retry: AbstractExchange
    dead: AbstractExchange


def notify_retry_key(delay: float) -> str:
    """The notifier's retry exchange key (and queue suffix) for one delay."""
    return f"{round(delay * 1000)}ms"


async def declare_notifier_topology(
    channel: AbstractChannel,
    retry_delays: tuple[float, ...],
    replication: Replication = Replication(),
) -> NotifierTopology:
    """The notifier's queues and exchanges (idempotent); the rest comes from `declare`."""
    results = await declare_queue(channel, NOTIFIER_QUEUE, NOTIFIER_QUEUE_ARGUMENTS, replication)
    await results.bind(RESULTS_EXCHANGE, routing_key="#")
    # Every notice: approval requests for the trigger's sinks, `running` for routes asking.
    await results.bind(PROGRESS_EXCHANGE, routing_key="#")
    notify = await channel.declare_exchange(
        NOTIFY_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    deliveries = await declare_queue(
        channel, NOTIFY_DELIVERIES_QUEUE, NOTIFY_DELIVERIES_ARGUMENTS, replication
    )
    await deliveries.bind(notify, routing_key=NOTIFY_ROUTING_KEY)
    retry = await channel.declare_exchange(
        NOTIFY_RETRY_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for delay in retry_delays:
        key = notify_retry_key(delay)
        waiting = await declare_queue(
            channel,
            f"{NOTIFY_RETRY_EXCHANGE}.{key}",
            {
                "x-queue-type": "quorum",
                "x-message-ttl": round(delay * 1000),
                "x-dead-letter-exchange": NOTIFY_EXCHANGE,
                "x-dead-letter-routing-key": NOTIFY_ROUTING_KEY,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
            replication,
        )
        await waiting.bind(retry, routing_key=key)
    dead = await channel.declare_exchange(DEAD_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    return NotifierTopology(
        results=results, deliveries=deliveries, notify=notify, retry=retry, dead=dead
    )


def result_routing_key(status: str, action: str, cluster: str, app: str) -> str:
    """``<status>.<action>.<cluster>.<app>``; names never contain dots (see NAME_PATTERN)."""
    return f"{status}.{action}.{cluster}.{app}"


def result_binding(
    *,
    status: str | None = None,
    action: str | None = None,
    cluster: str | None = None,
    app: str | None = None,
) -> str:
    """The binding key that selects results by any of the routing key's fields."""
    return ".".join(v or "*" for v in (status, action, cluster, app))
