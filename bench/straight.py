"""The stack's own floor: the straightforward aiohttp + aio-pika gateway and worker.

``python -m bench.straight PORT AMQP_URLS`` (one, or a cluster's, comma-separated)
serves ``GET /``: each call publishes one persistent message of a command's size (with a
fresh job id) to a quorum queue like ours through `Exchange.publish` on a confirm
channel, awaits the confirm, and answers 202 with the job id. No authentication, no
parsing, no history, no audit, no log line: what any gateway on aiohttp and aio-pika that
answers after the confirm costs at the least, so the distance from it to our gateway is
what our features cost.

``python -m bench.straight worker AMQP_URLS`` consumes that queue (prefetch 64): each
message is published as a persistent result event with the same job id on our results
exchange, confirmed, and then acked. With the gateway it is the plain pipeline: the floor
under our CPU per command end to end (no orchestrator change, no job record, no log).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator

import aio_pika
from aiohttp import web
from aiormq.exceptions import AMQPConnectionError

from bench.noop import serve
from shared.amqp_transport import split_urls
from shared.loop import run
from shared.topology import COMMAND_QUEUE_ARGUMENTS, RESULTS_EXCHANGE

__all__ = ["QUEUE", "main"]

QUEUE = "bench.straight"
_PAD = "x" * 370  # with the job id, about the size of an encoded scale command
_CHANNEL = web.AppKey("channel", aio_pika.abc.AbstractChannel)


async def _publish(request: web.Request) -> web.Response:
    channel = request.app[_CHANNEL]
    job_id = uuid.uuid4().hex
    body = f'{{"job_id":"{job_id}","pad":"{_PAD}"}}'.encode()
    message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await channel.default_exchange.publish(message, routing_key=QUEUE)
    return web.Response(
        body=f'{{"job_id":"{job_id}"}}'.encode(), status=202, content_type="application/json"
    )


async def _connect(value: str) -> aio_pika.abc.AbstractRobustConnection:
    """aio-pika's own robust connection to the first node of `value` that accepts one."""
    urls = split_urls(value)
    for url in urls[:-1]:
        try:
            return await aio_pika.connect_robust(url)
        except (OSError, AMQPConnectionError):
            continue
    return await aio_pika.connect_robust(urls[-1])


async def _work(amqp_url: str) -> None:
    """Consume the queue: publish each message as a confirmed result, then ack it."""
    connection = await _connect(amqp_url)
    async with connection:
        publisher = await connection.channel(publisher_confirms=True)
        results = await publisher.get_exchange(RESULTS_EXCHANGE)
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=64)
        queue = await consumer.declare_queue(QUEUE, durable=True, arguments=COMMAND_QUEUE_ARGUMENTS)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            result = aio_pika.Message(message.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await results.publish(result, routing_key="result.bench")
            await message.ack()

        await queue.consume(on_message)
        await asyncio.Future()  # until SIGTERM


def main() -> None:
    """Serve (or work) until SIGTERM."""
    if sys.argv[1] == "worker":
        run(_work(sys.argv[2]))
        return
    port, amqp_url = int(sys.argv[1]), sys.argv[2]

    async def broker(app: web.Application) -> AsyncIterator[None]:
        connection = await _connect(amqp_url)
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(QUEUE, durable=True, arguments=COMMAND_QUEUE_ARGUMENTS)
        app[_CHANNEL] = channel
        yield
        await connection.close()

    app = web.Application()
    app.cleanup_ctx.append(broker)
    app.router.add_get("/", _publish)
    serve(app, port)


if __name__ == "__main__":
    main()
