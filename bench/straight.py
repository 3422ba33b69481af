"""The stack's own ceiling: the straightforward aiohttp + aio-pika gateway.

``python -m bench.straight PORT AMQP_URLS`` (one, or a cluster's, comma-separated)
serves ``GET /``: each call publishes one persistent message of a command's size to a
quorum queue like ours through `Exchange.publish` on a confirm channel, awaits the
confirm, and answers 202. No
authentication, no parsing, no history, no audit, no log line: what any gateway on
aiohttp and aio-pika that answers after the confirm costs at the least, so the distance
from it to our gateway is what our features cost.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aio_pika
from aiohttp import web
from aiormq.exceptions import AMQPConnectionError

from bench.noop import serve
from shared.amqp_transport import split_urls
from shared.topology import COMMAND_QUEUE_ARGUMENTS

__all__ = ["QUEUE", "main"]

QUEUE = "bench.straight"
_BODY = b"x" * 420  # about the size of an encoded scale command
_CHANNEL = web.AppKey("channel", aio_pika.abc.AbstractChannel)


async def _publish(request: web.Request) -> web.Response:
    channel = request.app[_CHANNEL]
    message = aio_pika.Message(_BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await channel.default_exchange.publish(message, routing_key=QUEUE)
    return web.Response(body=b'{"status":"accepted"}', status=202, content_type="application/json")


async def _connect(value: str) -> aio_pika.abc.AbstractRobustConnection:
    """aio-pika's own robust connection to the first node of `value` that accepts one."""
    urls = split_urls(value)
    for url in urls[:-1]:
        try:
            return await aio_pika.connect_robust(url)
        except (OSError, AMQPConnectionError):
            continue
    return await aio_pika.connect_robust(urls[-1])


def main() -> None:
    """Serve until SIGTERM."""
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
