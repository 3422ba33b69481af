"""One contract, two buses: RabbitMQ (`AmqpBus`) and the in-process `MemoryBus` behave alike.

Each test runs once per implementation: the in-process half is marked `unit`, the
RabbitMQ half `rabbitmq` (the session's private vhost, queues purged per test).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import pytest

from shared.broker import AmqpBus, Bus, Delivery, MemoryBus
from shared.errors import BrokerUnavailable
from shared.messages import (
    CommandEnvelope,
    JobNotice,
    ResultEvent,
    decode_command,
    decode_job_event,
    encode,
)
from shared.topology import COMMAND_QUEUES, DEAD_QUEUE
from tests.support.messages import result_event, scale_command

# A delay the RabbitMQ half's settings declare a retry queue for (retry_delays[0]).
RETRY_DELAY = 0.05


@dataclass
class Broker:
    """A started bus and how to count what it dead-lettered."""

    bus: Bus
    dead_letters: Callable[[], Awaitable[int]]


@pytest.fixture(
    params=[
        pytest.param("in-process", marks=pytest.mark.unit),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def broker(request: pytest.FixtureRequest) -> Broker:
    """Each implementation in turn, started, its queues empty."""
    if request.param == "in-process":
        memory: MemoryBus = request.getfixturevalue("memory_bus")

        async def dead_in_memory() -> int:
            return len(memory.dead)

        return Broker(memory, dead_in_memory)
    amqp: AmqpBus = request.getfixturevalue("bus")

    async def dead_in_rabbitmq() -> int:
        return (await amqp.queue_depths())[DEAD_QUEUE]

    return Broker(amqp, dead_in_rabbitmq)


class Handled:
    """Deliveries a test handler saw, and an event set on each."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[int, bytes]] = []
        self.changed = asyncio.Event()

    def add(self, delivery: Delivery) -> None:
        """Note a delivery (its attempt and body)."""
        self.deliveries.append((delivery.attempt, delivery.body))
        self.changed.set()

    async def until(self, count: int) -> None:
        """Wait (bounded) until `count` deliveries were seen."""
        async with asyncio.timeout(10):
            while len(self.deliveries) < count:
                self.changed.clear()
                await self.changed.wait()


def _job_ids(bodies: list[bytes]) -> list[str]:
    return [decode_command(body).job_id for body in bodies]


async def test_a_confirmed_command_reaches_a_consumer_started_later(broker: Broker) -> None:
    """publish_command returns once the bus holds the command; a later consumer gets it as sent."""
    command = scale_command()
    await broker.bus.publish_command(command)
    handled = Handled()

    async def handler(delivery: Delivery) -> None:
        handled.add(delivery)
        await delivery.ack()

    await broker.bus.consume_commands(handler, prefetch=4)
    await handled.until(1)
    assert handled.deliveries == [(1, encode(command))]


async def test_a_consumer_holds_at_most_prefetch_unsettled_deliveries(broker: Broker) -> None:
    """With prefetch 2 and five commands, never more than two are in hand before an ack."""
    in_hand: list[tuple[Delivery, asyncio.Future[None]]] = []
    peak, acked, changed = 0, 0, asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        nonlocal peak
        settled = asyncio.get_running_loop().create_future()
        in_hand.append((delivery, settled))
        peak = max(peak, len(in_hand))
        changed.set()
        await settled

    await broker.bus.consume_commands(handler, prefetch=2)
    for _ in range(5):
        await broker.bus.publish_command(scale_command())
    async with asyncio.timeout(10):
        while acked < 5:
            await changed.wait()
            changed.clear()
            while in_hand and (len(in_hand) == 2 or acked + len(in_hand) == 5):
                delivery, settled = in_hand.pop(0)
                await delivery.ack()
                settled.set_result(None)
                acked += 1
    assert peak == 2


async def test_retry_delivers_the_command_again_as_the_next_attempt(broker: Broker) -> None:
    """A retried delivery comes back after the delay, same body, attempt 2; its ack ends it."""
    command = scale_command()
    handled = Handled()

    async def handler(delivery: Delivery) -> None:
        handled.add(delivery)
        if delivery.attempt == 1:
            await delivery.retry(RETRY_DELAY, "the cluster did not answer")
        else:
            await delivery.ack()

    await broker.bus.consume_commands(handler, prefetch=4)
    await broker.bus.publish_command(command)
    await handled.until(2)
    assert handled.deliveries == [(1, encode(command)), (2, encode(command))]
    assert await broker.dead_letters() == 0


async def test_requeue_gives_the_command_back_as_the_next_attempt(broker: Broker) -> None:
    """A requeued delivery is delivered again with its attempt counted."""
    command = scale_command()
    handled = Handled()

    async def handler(delivery: Delivery) -> None:
        handled.add(delivery)
        await (delivery.requeue() if delivery.attempt == 1 else delivery.ack())

    await broker.bus.consume_commands(handler, prefetch=4)
    await broker.bus.publish_command(command)
    await handled.until(2)
    assert [attempt for attempt, _ in handled.deliveries] == [1, 2]
    assert _job_ids([body for _, body in handled.deliveries]) == [command.job_id] * 2


async def test_dead_letter_keeps_the_command_out_of_the_queue(broker: Broker) -> None:
    """A dead-lettered command is counted as dead once dead_letter returns, and not redelivered."""
    first, second = scale_command(), scale_command()
    handled = Handled()

    async def handler(delivery: Delivery) -> None:
        if decode_command(delivery.body).job_id == first.job_id:
            await delivery.dead_letter("the target does not exist")
        else:
            await delivery.ack()
        handled.add(delivery)

    await broker.bus.consume_commands(handler, prefetch=1)
    await broker.bus.publish_command(first)
    await broker.bus.publish_command(second)
    await handled.until(2)
    assert _job_ids([body for _, body in handled.deliveries]) == [first.job_id, second.job_id]
    assert await broker.dead_letters() == 1


async def test_result_subscribers_get_what_their_binding_matches(broker: Broker) -> None:
    """A `reply.<key>` binding gets only results CC'd to it; `failed.#` only failures; `#` all."""
    replies: list[ResultEvent] = []
    failures: list[ResultEvent] = []
    everything: list[ResultEvent] = []

    def collect(into: list[ResultEvent]) -> Callable[[ResultEvent], Awaitable[None]]:
        async def handler(event: ResultEvent) -> None:
            into.append(event)

        return handler

    await broker.bus.subscribe_results(collect(replies), binding="reply.k1")
    await broker.bus.subscribe_results(collect(failures), binding="failed.#")
    await broker.bus.subscribe_results(collect(everything), binding="#")
    await broker.bus.publish_result(result_event("a" * 32))
    await broker.bus.publish_result(result_event("b" * 32), cc="reply.k1")
    await broker.bus.publish_result(result_event("c" * 32, status="failed"), cc="reply.other")
    # The broker keeps one channel's order: a wrong copy of an earlier event comes first.
    await broker.bus.publish_result(result_event("d" * 32), cc="reply.k1")
    async with asyncio.timeout(10):
        while len(everything) < 4 or len(replies) < 2 or not failures:
            await asyncio.sleep(0.02)
    assert [e.job_id for e in replies] == ["b" * 32, "d" * 32]
    assert [e.job_id for e in failures] == ["c" * 32]
    assert sorted(e.job_id for e in everything) == [c * 32 for c in "abcd"]


async def test_the_recorder_gets_every_notice_and_result(broker: Broker) -> None:
    """consume_job_events delivers progress notices and result events, in publish order."""
    handled = Handled()

    async def recorder(delivery: Delivery) -> None:
        handled.add(delivery)
        await delivery.ack()

    await broker.bus.consume_job_events(recorder, prefetch=8)
    command: CommandEnvelope = scale_command()
    notice = JobNotice(
        job_id=command.job_id,
        trigger_id=command.trigger_id,
        action=command.action,
        cluster="demo",
        app="shop",
        service="web",
    )
    await broker.bus.publish_notice(notice)
    await broker.bus.publish_result(result_event(command.job_id))
    await handled.until(2)
    events = [decode_job_event(body) for _, body in handled.deliveries]
    assert [type(e) for e in events] == [JobNotice, ResultEvent]
    assert {e.job_id for e in events} == {command.job_id}


async def test_a_subscriber_of_notices_gets_them_in_order_with_the_results(
    broker: Broker,
) -> None:
    """With `notices`, a subscription gets the matching `running` notices before the job's result, in publish order; without, results only; a status binding keeps notices out."""
    seen: list[ResultEvent | JobNotice] = []
    results_only: list[ResultEvent | JobNotice] = []
    succeeded: list[ResultEvent | JobNotice] = []

    def into(
        events: list[ResultEvent | JobNotice],
    ) -> Callable[[ResultEvent | JobNotice], Awaitable[None]]:
        async def handler(event: ResultEvent | JobNotice) -> None:
            events.append(event)

        return handler

    await broker.bus.subscribe_results(into(seen), binding="#", notices=into(seen))
    await broker.bus.subscribe_results(into(results_only), binding="#")
    await broker.bus.subscribe_results(
        into(succeeded), binding="succeeded.#", notices=into(succeeded)
    )
    job = scale_command().job_id
    notice = JobNotice(
        job_id=job, trigger_id="t", action="redeploy", cluster="demo", app="shop", service=None
    )
    await broker.bus.publish_notice(notice)
    await broker.bus.publish_notice(msgspec.structs.replace(notice, seq=1))
    await broker.bus.publish_result(result_event(job))
    async with asyncio.timeout(10):
        while len(seen) < 3 or not results_only or not succeeded:
            await asyncio.sleep(0.02)
    assert [(type(e), getattr(e, "seq", None)) for e in seen] == [
        (JobNotice, 0),
        (JobNotice, 1),
        (ResultEvent, None),
    ]
    assert [type(e) for e in results_only] == [ResultEvent]
    assert [type(e) for e in succeeded] == [ResultEvent]


async def test_close_ends_consumers_and_subscriptions_and_can_be_repeated(broker: Broker) -> None:
    """close returns with a consumer, a recorder and a subscriber open, and again after that."""

    async def ignore_delivery(delivery: Delivery) -> None:
        await delivery.ack()

    async def ignore_result(event: ResultEvent) -> None:
        pass

    await broker.bus.consume_commands(ignore_delivery, prefetch=1)
    await broker.bus.consume_job_events(ignore_delivery, prefetch=1)
    await broker.bus.subscribe_results(ignore_result)
    async with asyncio.timeout(10):
        await broker.bus.close()
        await broker.bus.close()
    assert await broker.bus.check_consumers() == []


@pytest.mark.rabbitmq
async def test_a_closed_rabbitmq_bus_refuses_to_publish(bus: AmqpBus) -> None:
    """After close the RabbitMQ bus is not ready and a publish raises BrokerUnavailable."""
    await bus.close()
    assert not bus.ready
    assert bus.node is None
    with pytest.raises(BrokerUnavailable, match="not connected"):
        await bus.publish_command(scale_command())


async def test_queue_depths_count_ready_commands_on_a_durable_bus(broker: Broker) -> None:
    """A durable bus counts the commands waiting per queue; the in-process one says None."""
    await broker.bus.publish_command(scale_command())
    await broker.bus.publish_command(scale_command())
    depths = await broker.bus.queue_depths()
    if not broker.bus.durable:
        assert depths is None
        return
    assert depths is not None
    assert depths[COMMAND_QUEUES["scale"]] == 2
    assert depths[COMMAND_QUEUES["redeploy"]] == 0
    assert depths[DEAD_QUEUE] == 0
