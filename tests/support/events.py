"""Notices and results as the broker routes them, and what a rollout's notices must show."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from shared.broker import AmqpBus
from shared.messages import (
    CommandEnvelope,
    JobNotice,
    Redeploy,
    ResultEvent,
    RolloutProgress,
    Target,
    decode_job_event,
    new_job_id,
)
from shared.topology import PROGRESS_EXCHANGE, RESULTS_EXCHANGE
from tests.support.waiting import eventually

__all__ = ["Reported", "job_events", "redeploy_in_steps", "rollout_sequence"]


class Reported:
    """An adapter's `progress` callback that keeps every report, in order."""

    def __init__(self) -> None:
        self.reports: list[dict[str, RolloutProgress]] = []

    async def __call__(self, counts: dict[str, RolloutProgress]) -> None:
        """Keep one report."""
        self.reports.append(counts)

    def of(self, service: str) -> list[tuple[int, int]]:
        """(updated, total) of `service` in each report that has it."""
        return [(c[service].updated, c[service].total) for c in self.reports if service in c]


@contextlib.asynccontextmanager
async def job_events(amqp_url: str) -> AsyncIterator[list[ResultEvent | JobNotice]]:
    """Every notice and result, in the order the broker routed them."""
    seen: list[ResultEvent | JobNotice] = []
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(PROGRESS_EXCHANGE, routing_key="#")
        await queue.bind(RESULTS_EXCHANGE, routing_key="#")

        async def on_event(message: AbstractIncomingMessage) -> None:
            seen.append(decode_job_event(message.body))

        await queue.consume(on_event, no_ack=True)
        yield seen


async def rollout_sequence(
    seen: Sequence[ResultEvent | JobNotice], job_id: str, service: str, within: float = 10.0
) -> tuple[list[tuple[int, int]], ResultEvent]:
    """The (updated, total) of `service` in the job's `running` notices, in order, and its
    result, once it arrived (`job_events`), checked to come last, after every notice, with
    the notices numbered in order."""

    async def finished() -> bool | None:
        done = any(isinstance(e, ResultEvent) and e.job_id == job_id for e in seen)
        return True if done else None

    await eventually(finished, what=f"the result of job {job_id}", within=within)
    mine = [e for e in seen if e.job_id == job_id]
    *notices, result = mine
    assert isinstance(result, ResultEvent), [e.status for e in mine]
    assert all(isinstance(n, JobNotice) and n.status == "running" for n in notices)
    assert [n.seq for n in notices if isinstance(n, JobNotice)] == list(range(len(notices)))
    counts = [
        (n.progress[service].updated, n.progress[service].total)
        for n in notices
        if isinstance(n, JobNotice) and service in n.progress
    ]
    return counts, result


async def redeploy_in_steps(
    bus: AmqpBus, amqp_url: str, target: Target, *, service: str, total: int, within: float
) -> list[tuple[int, int]]:
    """Publish a redeploy of `target` and check what its worker published: `running` with
    `service` below `total` updated at least once, never going back, then `succeeded`.
    Returns the (updated, total) the notices carried, in order."""
    envelope = CommandEnvelope(
        job_id=new_job_id(), trigger_id="t" * 26, target=target, command=Redeploy()
    )
    async with job_events(amqp_url) as seen:
        await bus.publish_command(envelope)
        counts, result = await rollout_sequence(seen, envelope.job_id, service, within)
    assert result.status == "succeeded", result.error
    assert any(updated < total for updated, _ in counts), counts
    assert {of for _, of in counts} == {total}, counts
    assert [u for u, _ in counts] == sorted(u for u, _ in counts), counts
    return counts
