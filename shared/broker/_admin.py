"""Queue depths, for the metrics: passive declares on a channel of their own."""

from __future__ import annotations

import contextlib

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from shared.topology import RECORDER_QUEUE, Topology

__all__ = ["read_queue_depths"]


async def read_queue_depths(
    connection: AbstractRobustConnection, topology: Topology
) -> dict[str, int]:
    """Messages ready in the command, dead-letter and (if declared) recorder queues.

    Passive declares on a channel of their own: a failed one closes its channel, and
    the recorder's queue exists only once a recorder ran.
    """
    names = [q.name for q in (*topology.command_queues.values(), topology.dead_queue)]
    depths: dict[str, int] = {}
    probe = await connection.channel(publisher_confirms=False)
    try:
        for name in [*names, RECORDER_QUEUE]:
            try:
                declared = await probe.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                break  # only the last one may be missing
            depths[name] = declared.declaration_result.message_count or 0
    finally:
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await probe.close()
    return depths
