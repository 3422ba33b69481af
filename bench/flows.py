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

__all__ = ["BrokerCeiling", "EndToEnd", "broker_ceiling", "end_to_end", "open_loop"]

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


class _Results:
    """The driver's result subscriber: when each job's result event arrived.

    As cheap as it can be (no acks, only the job id decoded, aiormq's delivery without
    aio-pika's message object on top): its CPU is taken from the machine the measured
    processes run on.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[float]] = {}
        self._early: dict[str, float] = {}
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def start(self, amqp_url: str) -> None:
        """Subscribe to every result event of the vhost."""
        self._connection = connection = await connect_any(amqp_url)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        results = await channel.declare_queue(exclusive=True, auto_delete=True)
        await results.bind(RESULTS_EXCHANGE, routing_key="#")
        raw = await channel.get_underlay_channel()
        await raw.basic_consume(results.name, self._on_result, no_ack=True)

    async def close(self) -> None:
        """Unsubscribe."""
        if self._connection is not None:
            await self._connection.close()

    async def _on_result(self, message: DeliveredMessage) -> None:
        arrived = time.perf_counter()
        job_id = _job_id.decode(message.body).job_id
        future = self._waiting.pop(job_id, None)
        if future is None:
            # The result can overtake the 202 (it is sent after the confirm).
            self._early[job_id] = arrived
        elif not future.done():
            future.set_result(arrived)

    async def arrival(self, job_id: str, deadline: float) -> float | None:
        """When the job's result arrived (perf_counter); None if not by `deadline`."""
        arrived = self._early.pop(job_id, None)
        if arrived is not None:
            return arrived
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = future
        try:
            async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                return await future
        except TimeoutError:
            self._waiting.pop(job_id, None)
            return None


async def _call(client: KeepAliveClient) -> str | None:
    """One call; its job id, or None when it was not accepted."""
    try:
        status, body = await client.get()
        if status != 202:
            return None
        return _job_id.decode(body).job_id
    except (HttpError, msgspec.DecodeError):
        return None


async def end_to_end(
    url: str, amqp_url: str, *, calls: int, in_flight: int, within: float
) -> EndToEnd:
    """`in_flight` callers, each calling again once its previous call's result arrived."""
    results = _Results()
    await results.start(amqp_url)
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
                    job_id = await _call(client)
                    arrived = None if job_id is None else await results.arrival(job_id, deadline)
                    if arrived is None:
                        errors += 1
                        continue
                    latencies.append((arrived - sent) * 1000)
                    last = max(last, arrived)
            finally:
                client.close()

        await asyncio.gather(*(caller() for _ in range(in_flight)))
    finally:
        await results.close()
    return EndToEnd(
        calls=issued,
        results=len(latencies),
        errors=errors,
        seconds=(last - began) if latencies else 0.0,
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        driver_cpu=time.process_time() - started_cpu,
    )


async def open_loop(
    url: str, amqp_url: str, *, rate: float, seconds: float, within: float
) -> EndToEnd:
    """Calls at a fixed rate, whatever the answers do (an open loop, as CI callers are).

    Call i is due at start + i / rate; its latency runs from when it was due to its result
    event, so a driver or a gateway falling behind shows in the figures rather than
    slowing the calls down. Connections are reused when idle and opened when none is.
    """
    results = _Results()
    await results.start(amqp_url)
    latencies: list[float] = []
    idle: list[KeepAliveClient] = []
    clients: list[KeepAliveClient] = []
    errors = 0
    started_cpu = time.process_time()

    async def call(due: float, deadline: float) -> None:
        nonlocal errors
        if idle:
            client = idle.pop()
        else:
            client = KeepAliveClient(url)
            clients.append(client)
        job_id = await _call(client)
        idle.append(client)
        arrived = None if job_id is None else await results.arrival(job_id, deadline)
        if arrived is None:
            errors += 1
            return
        latencies.append((arrived - due) * 1000)

    total = max(1, round(rate * seconds))
    calls: list[asyncio.Task[None]] = []
    try:
        began = time.perf_counter()
        deadline = began + within
        for i in range(total):
            due = began + i / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            calls.append(asyncio.create_task(call(due, deadline)))
        await asyncio.gather(*calls)
        elapsed = time.perf_counter() - began
    finally:
        for client in clients:
            client.close()
        await results.close()
    return EndToEnd(
        calls=total,
        results=len(latencies),
        errors=errors,
        seconds=elapsed,
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        driver_cpu=time.process_time() - started_cpu,
    )
