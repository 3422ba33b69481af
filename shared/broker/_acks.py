"""Batched acks: one ``basic.ack(multiple=True)`` for many deliveries of a channel."""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractIncomingMessage

__all__ = ["Acks"]

_IN_HAND, _ACK, _SETTLED = 0, 1, 2
# Delivery tags one consumer channel keeps track of at most (a few prefetch windows).
_TRACK_AT_MOST = 10_000


class Acks:
    """The acks of one consumer channel, sent together: one frame for many deliveries.

    Commands that finish together (a group commit, their result confirms arriving in one
    read) are acked with one ``basic.ack(multiple=True)`` instead of one frame each: a
    socket write in the worker and a frame for the broker saved per command.

    Safe by construction: `multiple` covers every unsettled delivery up to its tag, so it
    is sent only for a run of consecutive tags from the lowest unsettled one, each
    registered when delivered (a channel numbers its deliveries 1, 2, 3, ...) and each
    either waiting for this ack or already settled otherwise (a nack or reject written
    to the channel before; the broker reads a channel's frames in order). A delivery
    still in hand ends the run; acks beyond it are sent one by one, never held back.
    One task sends them all, in order. Deliveries of an earlier channel (before a
    reconnect) keep their own `Acks`, whose acks fail as they would alone. Should a
    delivery stay unsettled for good (a handler that failed before settling), the tags
    kept past it are bounded: beyond `_TRACK_AT_MOST` this channel acks one by one.
    """

    __slots__ = ("_sender", "_state", "_through", "_tracking", "_waiting", "channel")

    def __init__(self, channel: object) -> None:
        self.channel = channel
        self._through = 0  # every delivery tag up to this one is settled
        self._state: dict[int, int] = {}
        self._waiting: dict[int, tuple[AbstractIncomingMessage, asyncio.Future[None]]] = {}
        self._sender: asyncio.Task[None] | None = None
        self._tracking = True

    def delivered(self, tag: int) -> None:
        """A delivery reached the consumer (called before anything is awaited)."""
        if self._tracking:
            self._state[tag] = _IN_HAND

    def settled(self, tag: int) -> None:
        """The delivery was nacked or rejected, and that frame is written."""
        if tag in self._state:
            self._state[tag] = _SETTLED

    def ack(self, message: AbstractIncomingMessage, tag: int) -> asyncio.Future[None]:
        """Ack `message` (delivery `tag`) with the next batch; done once its frame is written."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._tracking:
            self._state[tag] = _ACK
        self._waiting[tag] = (message, future)
        if self._sender is None:
            # Started after what is already scheduled: acks of this turn go together.
            self._sender = loop.create_task(self._send_all())
        return future

    def _run(self) -> int | None:
        """Settle the run of consecutive tags not in hand; the highest to ack in it."""
        state, tag, last = self._state, self._through + 1, None
        while (mark := state.get(tag)) is not None and mark != _IN_HAND:
            del state[tag]
            if mark == _ACK:
                last = tag
            tag += 1
        self._through = tag - 1
        return last

    async def _send_all(self) -> None:
        try:
            while waiting := self._waiting:
                batch: list[tuple[AbstractIncomingMessage, list[asyncio.Future[None]]]] = []
                last = self._run() if self._tracking else None
                if last is not None:
                    covered = [tag for tag in waiting if tag <= last]
                    batch.append((waiting[last][0], [waiting.pop(tag)[1] for tag in covered]))
                # Past a delivery still in hand: one by one, none waits for a slow one.
                for tag in list(waiting):
                    message, future = waiting.pop(tag)
                    if self._tracking:
                        self._state[tag] = _SETTLED
                    batch.append((message, [future]))
                if len(self._state) > _TRACK_AT_MOST:
                    self._tracking = False
                    self._state.clear()
                for message, futures in batch:
                    await self._send(message, futures, multiple=len(futures) > 1)
        finally:
            self._sender = None

    @staticmethod
    async def _send(
        message: AbstractIncomingMessage, futures: list[asyncio.Future[None]], *, multiple: bool
    ) -> None:
        try:
            # aiormq's ack, not waiting for the socket write (aio-pika's `ack` waits, which
            # makes the connection's writer send it at once, alone): the frame joins the
            # loop turn's other frames (`shared.amqp_transport`). Nothing waits on it
            # being written: a lost connection redelivers, like an ack lost on the wire.
            tag = message.delivery_tag
            if tag is None:
                await message.ack(multiple=multiple)
            else:
                await message.channel.basic_ack(tag, multiple=multiple, wait=False)
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future in futures:
            if not future.done():
                future.set_result(None)
