"""Measurements driven from the harness process: the broker ceiling and end to end."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aio_pika
import msgspec
from aiormq.abc import DeliveredMessage

from bench.client import HttpError, KeepAliveClient
from bench.load import percentile
from shared.amqp_transport import connect_any
from shared.topology import COMMAND_QUEUE_ARGUMENTS, RESULTS_EXCHANGE

__all__ = ["BrokerCeiling", "EndToEnd", "broker_ceiling", "end_to_end"]

CEILING_QUEUE = "bench.ceiling"


@dataclass(frozen=True)
class BrokerCeiling:
    """Confirmed persistent publishes per second on one connection."""

    messages: int
    seconds: float
    client_cpu: float

    @property
    def rate(self) -> float:
        """Confirmed messages per second."""
        return self.messages / self.seconds if self.seconds else 0.0


async def broker_ceiling(amqp_url: str, *, seconds: float, in_flight: int) -> BrokerCeiling:
    """Publish persistent messages of a command's size to a quorum queue like ours.

    One confirm channel, `in_flight` publishes outstanding: what the broker itself can
    confirm, which bounds any gateway that answers only after the confirm.
    """
    connection = await connect_any(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            CEILING_QUEUE, durable=True, arguments=COMMAND_QUEUE_ARGUMENTS
        )
        body = b"x" * 420  # about the size of an encoded scale command
        sent = 0
        started_cpu = time.process_time()
        deadline = time.perf_counter() + seconds

        async def publisher() -> None:
            nonlocal sent
            while time.perf_counter() < deadline:
                message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                await channel.default_exchange.publish(message, routing_key=CEILING_QUEUE)
                sent += 1

        began = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(in_flight)))
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - started_cpu
        await queue.delete(if_unused=False, if_empty=False)
    return BrokerCeiling(messages=sent, seconds=elapsed, client_cpu=cpu)


class _JobId(msgspec.Struct):
    job_id: str


_job_id = msgspec.json.Decoder(_JobId)


@dataclass(frozen=True)
class EndToEnd:
    """N calls, each timed from its HTTP request to the arrival of its result event."""

    calls: int
    results: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    driver_cpu: float

    @property
    def rate(self) -> float:
        """Result events per second."""
        return self.results / self.seconds if self.seconds else 0.0


async def end_to_end(  # noqa: PLR0915 - one closed-loop driver reads best whole
    url: str, amqp_url: str, *, calls: int, in_flight: int, within: float
) -> EndToEnd:
    """`in_flight` callers, each calling again once its previous call's result arrived."""
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[float]] = {}
    early: dict[str, float] = {}

    async def on_result(message: DeliveredMessage) -> None:
        arrived = time.perf_counter()
        job_id = _job_id.decode(message.body).job_id
        future = waiting.pop(job_id, None)
        if future is None:
            # The result can overtake the 202 (it is sent after the confirm).
            early[job_id] = arrived
        elif not future.done():
            future.set_result(arrived)

    # The driver's own subscriber is as cheap as it can be (no acks, only the job id
    # decoded, aiormq's delivery without aio-pika's message object on top): its CPU is
    # taken from the machine the measured processes run on.
    connection = await connect_any(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    results = await channel.declare_queue(exclusive=True, auto_delete=True)
    await results.bind(RESULTS_EXCHANGE, routing_key="#")
    raw = await channel.get_underlay_channel()
    await raw.basic_consume(results.name, on_result, no_ack=True)
    latencies: list[float] = []
    errors = 0
    issued = 0
    last = 0.0
    started_cpu = time.process_time()
    try:
        began = time.perf_counter()
        deadline = began + within

        async def caller() -> None:
            nonlocal errors, issued, last
            client = KeepAliveClient(url)
            try:
                while issued < calls and time.perf_counter() < deadline:
                    issued += 1
                    sent = time.perf_counter()
                    try:
                        status, body = await client.get()
                        if status != 202:
                            errors += 1
                            continue
                        job_id = _job_id.decode(body).job_id
                    except (HttpError, msgspec.DecodeError):
                        errors += 1
                        continue
                    arrived = early.pop(job_id, None)
                    if arrived is None:
                        future = loop.create_future()
                        waiting[job_id] = future
                        try:
                            async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                                arrived = await future
                        except TimeoutError:
                            errors += 1
                            continue
                    latencies.append((arrived - sent) * 1000)
                    last = max(last, arrived)
            finally:
                client.close()

        await asyncio.gather(*(caller() for _ in range(in_flight)))
    finally:
        await connection.close()
    return EndToEnd(
        calls=issued,
        results=len(latencies),
        errors=errors,
        seconds=(last - began) if latencies else 0.0,
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        driver_cpu=time.process_time() - started_cpu,
    )
