"""Who receives a result event, through the real broker: the waiting gateway's key is CC'd."""

from __future__ import annotations

import asyncio

from shared.broker import AmqpBus
from shared.messages import ResultEvent
from shared.settings import Settings
from tests.support.messages import result_event


async def test_a_reply_key_receives_only_results_cc_d_to_it(settings: Settings) -> None:
    """A queue bound to `reply.<key>` gets the results CC'd to it, once; a "#" tail gets all."""
    publisher = AmqpBus(settings.amqp_url, role="test-worker")
    listener = AmqpBus(settings.amqp_url, role="test-gateway")
    await publisher.start()
    await listener.start()
    replies: list[ResultEvent] = []
    tail: list[ResultEvent] = []

    async def on_reply(event: ResultEvent) -> None:
        replies.append(event)

    async def on_tail(event: ResultEvent) -> None:
        tail.append(event)

    try:
        await listener.subscribe_results(on_reply, binding="reply.k1")
        await listener.subscribe_results(on_tail, binding="#")
        await publisher.publish_result(result_event("a" * 32))
        await publisher.publish_result(result_event("b" * 32), cc="reply.k1")
        await publisher.publish_result(result_event("c" * 32), cc="reply.other")
        # A last reply from the same channel: the broker keeps a channel's order, so a
        # wrongly routed copy of an earlier event would reach the queue before it.
        await publisher.publish_result(result_event("d" * 32), cc="reply.k1")
        async with asyncio.timeout(10):
            while len(tail) < 4 or len(replies) < 2:
                await asyncio.sleep(0.02)
    finally:
        await listener.close()
        await publisher.close()
    assert [e.job_id for e in replies] == ["b" * 32, "d" * 32]
    assert sorted(e.job_id for e in tail) == ["a" * 32, "b" * 32, "c" * 32, "d" * 32]
