"""The notifier: results (and approval requests) to the sinks that want them.

Its own process (`triggers notifier`), so a slow Slack or a dead SMTP server never holds
up a worker or the gateway. Two steps, each on a durable quorum queue:

1. ``triggers.results.notifier`` receives every result and every progress notice
   (``pending_approval``, and ``running`` for routes that name it). For each, the sinks are chosen (the trigger's ``notify`` list and the global
   routes by cluster/app/status) and one `NotificationDelivery` per sink is published to
   ``triggers.notify.deliveries``, confirmed, before the result is acked.
2. Each delivery is sent to its sink. On a failure worth retrying it is republished to a
   delay queue (``triggers.notify.retry.<ms>ms``) with attempt + 1, and acked; after
   ``TRIGGERS_NOTIFY_MAX_ATTEMPTS``, or on a failure that cannot get better (a 4xx, a
   refused login), it goes to ``triggers.dead`` with the reason (`triggers dlq list`).

Nothing is acked before what it stands for is done or safely handed on, so a notifier
killed at any point loses nothing; what it was sending is sent again (receivers
de-duplicate on the job id every delivery carries).

The notifier also expires held calls whose approval timed out (`Decisions.sweep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from datetime import timedelta
from typing import Any

import aio_pika
import msgspec
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from cachetools import TTLCache

from shared.amqp_transport import connect_robust_nodes
from shared.approvals import Decisions, approval_link, sign_link
from shared.broker import AmqpBus, Bus, copy_message, dead_letter_headers
from shared.errors import BrokerUnavailable
from shared.jobs import JobStore
from shared.messages import (
    JobNotice,
    NotificationDelivery,
    ResultEvent,
    decode_delivery,
    decode_job_event,
    encode,
    utcnow,
)
from shared.metrics import NOTIFICATIONS
from shared.notify_store import NotifyStore, Route, Sink, open_notify_store
from shared.settings import Settings
from shared.signals import until_signalled
from shared.sinks import DeliveryFailed, SinkSender
from shared.store import TriggerStore, open_store
from shared.topology import (
    NOTIFIER_QUEUE,
    NOTIFIER_QUEUE_ARGUMENTS,
    NOTIFY_DELIVERIES_ARGUMENTS,
    NOTIFY_DELIVERIES_QUEUE,
    NOTIFY_ROUTING_KEY,
    NotifierTopology,
    Replication,
    declare,
    declare_notifier_topology,
    declare_queue,
    notify_retry_key,
)
from shared.triggers import Trigger

__all__ = ["Notifier", "run_notifier"]

log = structlog.get_logger("triggers.notifier")

# Sinks, routes and triggers change rarely: read at most this often per notifier.
_CACHE_TTL = 5.0
# A delivery's content type, for people reading queues in the management UI.
DELIVERY_CONTENT_TYPE = "application/vnd.container-triggers.notification.v1+json"


class Notifier:
    """Consumes results into deliveries, and deliveries into sinks."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: NotifyStore,
        triggers: TriggerStore,
        bus: Bus,
        jobs: JobStore | None = None,
        sender: SinkSender | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._triggers = triggers
        self._decisions = Decisions(store, triggers, bus, jobs)
        self._sender = sender or SinkSender(settings.public_url, smtp_cafile=settings.smtp_cafile)
        self._connection: AbstractRobustConnection | None = None
        self._topology: NotifierTopology | None = None
        self._consumers: list[tuple[Any, str]] = []
        self._cache: TTLCache[str, Any] = TTLCache(maxsize=10_000, ttl=_CACHE_TTL)
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect, declare the queues, start consuming and sweeping."""
        settings = self._settings
        try:
            # Every node of TRIGGERS_AMQP_URL, as the bus connects (shared/amqp_transport.py).
            self._connection = await connect_robust_nodes(
                settings.amqp_url, name=f"notifier@{socket.gethostname()}:{os.getpid()}"
            )
        except CONNECTION_EXCEPTIONS as exc:
            msg = f"cannot reach RabbitMQ: {exc!r}"
            raise BrokerUnavailable(msg) from exc
        publisher = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        replication = Replication.of(settings)
        await declare(publisher, settings.retry_delays, replication)
        self._topology = await declare_notifier_topology(
            publisher, settings.notify_retry_delays, replication
        )
        await self._consume(NOTIFIER_QUEUE, NOTIFIER_QUEUE_ARGUMENTS, self._on_event)
        await self._consume(NOTIFY_DELIVERIES_QUEUE, NOTIFY_DELIVERIES_ARGUMENTS, self._on_delivery)
        self._sweeper = asyncio.create_task(self._sweep_forever())
        log.info(
            "notifier.started",
            retry_delays=list(settings.notify_retry_delays),
            max_attempts=settings.notify_max_attempts,
        )

    async def _consume(self, name: str, arguments: dict[str, Any], handler: Any) -> None:
        assert self._connection is not None  # noqa: S101 - start() connected
        channel: AbstractChannel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self._settings.prefetch)
        # Declared on this channel so the robust channel re-declares it after a reconnect.
        queue = await declare_queue(channel, name, arguments, Replication.of(self._settings))
        tag = await queue.consume(handler)
        self._consumers.append((queue, tag))

    async def stop(self) -> None:
        """Stop consuming; unacked messages go back to the queues for the next notifier."""
        for queue, tag in self._consumers:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await queue.cancel(tag)
        self._consumers.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._sender.close()
        if self._connection is not None:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await self._connection.close()
        log.info("notifier.stopped")

    async def run(self) -> None:
        """Notify until SIGTERM or SIGINT."""
        await until_signalled(self.start, self.stop)

    # --- step 1: results -> deliveries ---------------------------------------------

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            event = decode_job_event(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._dead(message, f"undecodable job event: {exc}"[:500], attempt=1)
            return
        if (isinstance(event, ResultEvent) and event.duplicate) or (
            isinstance(event, JobNotice) and event.seq > 0
        ):
            # A redelivered command's second result: its first was notified already. A
            # rollout's progress after `running`: sinks hear of a job's state once each
            # (their receivers key on the job); history, tail and the console show it.
            await message.ack()
            return
        try:
            sinks = await self._sinks_for(event)
            for name in sinks:
                delivery = NotificationDelivery(
                    sink=name,
                    result=event if isinstance(event, ResultEvent) else None,
                    notice=event if isinstance(event, JobNotice) else None,
                )
                await self._publish(delivery)
        except Exception as exc:
            # The store or the broker: the event stays, tried again shortly (bounded by
            # the queue's delivery limit).
            log.warning("notifier.route_failed", job_id=event.job_id, error=repr(exc))
            await asyncio.sleep(1.0)
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await message.nack(requeue=True)
            return
        await message.ack()
        if sinks:
            log.info("notifier.routed", job_id=event.job_id, status=event.status, sinks=sinks)

    async def _cached(self, key: str, load: Any) -> Any:
        try:
            return self._cache[key]
        except KeyError:
            value = await load()
            self._cache[key] = value
            return value

    async def _sinks_for(self, event: ResultEvent | JobNotice) -> list[str]:
        """The trigger's sinks, then those of every global route the event matches."""
        trigger: Trigger | None = await self._cached(
            f"trigger:{event.trigger_id}", lambda: self._triggers.get(event.trigger_id)
        )
        routes: list[Route] = await self._cached("routes", self._store.list_routes)
        # A trigger's own sinks get its results and approval requests, not `running`.
        own = trigger is not None and event.status != "running"
        names = list(trigger.notify) if own and trigger is not None else []
        names += [r.sink for r in routes if r.matches(event.cluster, event.app, event.status)]
        return list(dict.fromkeys(names))

    async def _publish(self, delivery: NotificationDelivery, delay: float | None = None) -> None:
        assert self._topology is not None  # noqa: S101 - start() declared it
        message = aio_pika.Message(
            body=encode(delivery),
            content_type="application/json",
            type=DELIVERY_CONTENT_TYPE,
            message_id=f"{delivery.job_id}.{delivery.sink}",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        if delay is None:
            exchange, key = self._topology.notify, NOTIFY_ROUTING_KEY
        else:
            exchange, key = self._topology.retry, notify_retry_key(delay)
        await exchange.publish(
            message, routing_key=key, mandatory=True, timeout=self._settings.publish_timeout
        )

    # --- step 2: deliveries -> sinks -----------------------------------------------

    async def _on_delivery(self, message: AbstractIncomingMessage) -> None:
        try:
            delivery = decode_delivery(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._dead(message, f"undecodable delivery: {exc}"[:500], attempt=1)
            return
        with structlog.contextvars.bound_contextvars(
            job_id=delivery.job_id, sink=delivery.sink, attempt=delivery.attempt
        ):
            await self._deliver(message, delivery)

    async def _deliver(
        self, message: AbstractIncomingMessage, delivery: NotificationDelivery
    ) -> None:
        try:
            sink: Sink | None = await self._cached(
                f"sink:{delivery.sink}", lambda: self._store.get_sink(delivery.sink)
            )
            approval_url = await self._approval_url(delivery, sink)
        except Exception as exc:
            log.warning("notifier.store_failed", error=repr(exc))
            await asyncio.sleep(1.0)
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await message.nack(requeue=True)
            return
        if sink is None:
            reason = f"sink {delivery.sink!r} does not exist (deleted?); nothing was sent"
            await self._dead(message, reason, attempt=delivery.attempt)
            return
        if sink.digest and approval_url is None:
            # Kept for the sink's next digest mail (`_send_digests`): acked once stored.
            try:
                await self._store.queue_digest(delivery)
            except Exception as exc:
                log.warning("notifier.store_failed", error=repr(exc))
                await asyncio.sleep(1.0)
                with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                    await message.nack(requeue=True)
                return
            await message.ack()
            NOTIFICATIONS.labels(sink.type, "digest_queued").inc()
            log.info("notifier.digest_queued")
            return
        try:
            await self._sender.send(sink, delivery, approval_url)
        except DeliveryFailed as exc:
            NOTIFICATIONS.labels(sink.type, await self._failed(message, delivery, exc)).inc()
            return
        await message.ack()
        NOTIFICATIONS.labels(sink.type, "delivered").inc()
        log.info("notifier.delivered", type=sink.type)

    async def _approval_url(self, delivery: NotificationDelivery, sink: Sink | None) -> str | None:
        notice = delivery.notice
        if sink is None or notice is None or notice.status != "pending_approval":
            return None
        key: bytes = await self._cached("link_key", self._store.link_key)
        expires = notice.expires_at or utcnow() + timedelta(hours=1)
        token = sign_link(key, notice.job_id, sink.name, expires)
        return approval_link(self._settings.public_url, token)

    async def _failed(
        self, message: AbstractIncomingMessage, delivery: NotificationDelivery, exc: DeliveryFailed
    ) -> str:
        """Retry later or dead-letter; which one, for the metrics."""
        attempts = self._settings.notify_max_attempts
        if not exc.retryable or delivery.attempt >= attempts:
            why = (
                "not retryable"
                if not exc.retryable
                else f"gave up after {delivery.attempt} attempts"
            )
            reason = f"notification to sink {delivery.sink!r} failed ({why}): {exc.reason}"
            log.error("notifier.dead_lettered", reason=reason)
            await self._dead(message, reason[:1000], attempt=delivery.attempt)
            return "dead_lettered"
        delays = self._settings.notify_retry_delays
        delay = delays[min(delivery.attempt - 1, len(delays) - 1)]
        log.warning(
            "notifier.retry_scheduled", attempt=delivery.attempt, error=exc.reason, wait_for=delay
        )
        retry = msgspec.structs.replace(delivery, attempt=delivery.attempt + 1)
        try:
            # The next attempt is confirmed before this one is acked: a crash in between
            # sends twice, never not at all.
            await self._publish(retry, delay=delay)
        except Exception as error:
            log.warning("notifier.retry_unpublished", error=repr(error))
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await message.nack(requeue=True)
            return "requeued"
        await message.ack()
        return "retried"

    async def _dead(self, message: AbstractIncomingMessage, reason: str, *, attempt: int) -> None:
        """To ``triggers.dead`` with the reason beside it, then acked."""
        assert self._topology is not None  # noqa: S101 - start() declared it
        queue = message.routing_key or NOTIFY_DELIVERIES_QUEUE
        headers = dead_letter_headers(message, reason, attempts=attempt, queue=queue)
        try:
            await self._topology.dead.publish(
                copy_message(message, headers),
                routing_key="",
                mandatory=True,
                timeout=self._settings.publish_timeout,
            )
        except Exception as exc:
            log.warning("notifier.dead_letter_unpublished", error=repr(exc))
            # The queue's own dead-lettering still keeps it (reason: "rejected").
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await message.reject(requeue=False)
            return
        await message.ack()

    # --- approvals that time out ----------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            try:
                if done := await self._decisions.sweep():
                    log.info("notifier.approvals_swept", decided=done)
                await self._send_digests()
            except Exception as exc:  # the store or broker may be down; next round
                log.warning("notifier.sweep_failed", error=repr(exc))
            await asyncio.sleep(self._settings.approval_sweep_interval)

    async def _send_digests(self) -> None:
        """One mail per digest sink whose oldest waiting result waited its interval."""
        for sink in await self._store.list_sinks():
            if not sink.digest:
                continue
            claimed = await self._store.claim_digest(sink.name, sink.digest, utcnow())
            if claimed is None:
                continue
            claim, deliveries = claimed
            try:
                await self._sender.send_digest(sink, deliveries)
            except DeliveryFailed as exc:
                # Kept: the next round tries again (a digest is never dead-lettered).
                log.warning("notifier.digest_failed", sink=sink.name, error=exc.reason)
                await self._store.settle_digest(claim, sent=False)
                continue
            await self._store.settle_digest(claim, sent=True)
            log.info("notifier.digest_sent", sink=sink.name, results=len(deliveries))


async def run_notifier(settings: Settings) -> None:
    """Notify until SIGTERM; refuses to start without the store or the broker."""
    store = open_notify_store(settings.database)
    triggers = open_store(settings.database)
    bus = AmqpBus.from_settings(settings, "notifier")
    try:
        await store.start()
        await bus.start()
        await Notifier(settings, store=store, triggers=triggers, bus=bus).run()
    finally:
        await bus.close()
        await triggers.close()
        await store.close()
