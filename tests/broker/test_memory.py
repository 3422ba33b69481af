"""The in-process bus of `triggers dev`: what it does beyond the shared contract."""

from __future__ import annotations

import asyncio

import pytest

from shared.broker import Delivery, MemoryBus
from shared.broker._memory import topic_matches
from shared.messages import CommandEnvelope, Redeploy, ResultEvent, decode_command, encode
from tests.support.messages import result_event, scale_command

pytestmark = pytest.mark.unit


def _redeploy() -> CommandEnvelope:
    command = scale_command()
    return CommandEnvelope(
        job_id=command.job_id,
        trigger_id=command.trigger_id,
        target=command.target,
        command=Redeploy(),
    )


@pytest.mark.parametrize(
    ("binding", "key", "matches"),
    [
        ("#", "succeeded.scale.demo.shop", True),
        ("succeeded.#", "succeeded.scale.demo.shop", True),
        ("failed.#", "succeeded.scale.demo.shop", False),
        ("*.scale.demo.*", "failed.scale.demo.shop", True),
        ("*.scale.demo.*", "failed.scale.demo", False),
        ("*.redeploy.*.*", "failed.scale.demo.shop", False),
        ("reply.k1", "reply.k1", True),
        ("reply.k1", "reply.k2", False),
        ("reply.k1", "reply.k1.extra", False),
        ("reply", "reply.k1", False),
    ],
)
def test_topic_matching_follows_amqp_words(binding: str, key: str, matches: bool) -> None:
    """Bindings match whole dot-separated words, '*' one word, a trailing '#' the rest."""
    assert topic_matches(binding, key) is matches


async def test_it_says_what_it_is(memory_bus: MemoryBus) -> None:
    """Always ready, not durable, no broker queues to count, no consumer to lose."""
    assert memory_bus.ready
    assert not memory_bus.durable
    assert memory_bus.node == "in-process"
    assert await memory_bus.queue_depths() is None
    assert await memory_bus.check_consumers() == []
    await memory_bus.wait_started()


async def test_dead_letters_keep_the_body_and_the_reason(memory_bus: MemoryBus) -> None:
    """A dead-lettered command is kept in `dead` with its reason, for dev to show."""
    command = scale_command()
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        await delivery.dead_letter("no such service")
        done.set()

    await memory_bus.consume_commands(handler, prefetch=1)
    await memory_bus.publish_command(command)
    async with asyncio.timeout(5):
        await done.wait()
    assert memory_bus.dead == [(encode(command), "no such service")]


async def test_a_retry_waits_its_delay(memory_bus: MemoryBus) -> None:
    """The next attempt is not handed over before the retry delay has passed."""
    loop = asyncio.get_running_loop()
    seen: list[float] = []
    again = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        seen.append(loop.time())
        if delivery.attempt == 1:
            await delivery.retry(0.2, "later")
        else:
            again.set()

    await memory_bus.consume_commands(handler, prefetch=1)
    await memory_bus.publish_command(scale_command())
    async with asyncio.timeout(5):
        await again.wait()
    assert seen[1] - seen[0] >= 0.2


async def test_each_action_has_its_own_queue_and_prefetch(memory_bus: MemoryBus) -> None:
    """A scale command held in hand does not stop a redeploy from being delivered."""
    release = asyncio.Event()
    redeployed = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        if decode_command(delivery.body).action == "scale":
            await release.wait()
        else:
            redeployed.set()
        await delivery.ack()

    await memory_bus.consume_commands(handler, prefetch=1)
    await memory_bus.publish_command(scale_command())
    await memory_bus.publish_command(_redeploy())
    async with asyncio.timeout(5):
        await redeployed.wait()
    release.set()


async def test_a_result_reaches_each_subscriber_once_even_when_cc_matches_too(
    memory_bus: MemoryBus,
) -> None:
    """A subscriber whose binding matches both the key and the CC gets the event once."""
    got: list[ResultEvent] = []

    async def handler(event: ResultEvent) -> None:
        got.append(event)

    await memory_bus.subscribe_results(handler, binding="#")
    await memory_bus.publish_result(result_event("a" * 32), cc="reply.k1")
    assert [e.job_id for e in got] == ["a" * 32]


async def test_events_without_a_recorder_are_dropped(memory_bus: MemoryBus) -> None:
    """With no recorder consuming, publishing a result is fine and nothing is kept."""
    await memory_bus.publish_result(result_event("a" * 32))
    assert memory_bus.dead == []


async def test_after_close_commands_wait_for_the_next_consumer(memory_bus: MemoryBus) -> None:
    """A closed bus's consumer takes nothing more; a consumer started later gets the command."""
    old: list[bytes] = []
    new = asyncio.Event()

    async def closed_handler(delivery: Delivery) -> None:
        old.append(delivery.body)

    async def next_handler(delivery: Delivery) -> None:
        new.set()

    await memory_bus.consume_commands(closed_handler, prefetch=1)
    await memory_bus.close()
    await memory_bus.publish_command(scale_command())
    await memory_bus.consume_commands(next_handler, prefetch=1)
    async with asyncio.timeout(5):
        await new.wait()
    assert old == []
