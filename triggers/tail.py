"""`triggers tail`: result events, live, optionally after replaying recent history.

Live events are subscribed to *before* history is read, and held until the replay is
printed, so nothing falls between the two; a job printed from history is not printed
again when its (duplicate) result shows up live, unless what was printed was the job in
flight. People (not --json) also see the `running` notices of jobs as they come, with a
rollout's progress (``▶ RUNNING redeploy demo/shop/web 2/3 updated``).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from datetime import datetime

import click

from shared.amqp_transport import redact
from shared.broker import AmqpBus
from shared.errors import BrokerUnavailable
from shared.jobs import JobRecord, opened_job_store
from shared.loop import run
from shared.messages import JobNotice, ResultEvent, encode
from shared.settings import Settings
from shared.signals import on_stop_signal
from shared.topology import result_binding
from triggers.options import (
    only_action,
    only_app,
    only_cluster,
    only_service,
    settings_of,
    since,
    wide,
)
from triggers.render import console, event_lines, job_lines

__all__ = ["run_tail", "tail"]

_REPLAY_LIMIT = 10_000
# A job shown in one of these states is shown again once its result comes.
_IN_FLIGHT = frozenset({"pending_approval", "accepted", "running"})


class _Printer:
    """Prints events and history jobs once each, counting toward `count`."""

    def __init__(self, *, as_json: bool, count: int | None, wide: bool = False) -> None:
        self._as_json = as_json
        self._count = count
        self._console = console()
        self._width = None if wide else self._console.width
        self.printed: dict[str, str] = {}  # job id: the status shown
        self.statuses: Counter[str] = Counter()
        self._in_flight: dict[str, str] = {}  # jobs counted in flight: the status counted
        self.done = asyncio.Event()

    def _full(self) -> bool:
        return self._count is not None and sum(self.statuses.values()) >= self._count

    def event(self, event: ResultEvent) -> None:
        # A job is shown once, unless what was shown was `failed` and a later result came
        # (a job replayed from the dead-letter queue): its latest outcome is shown too.
        shown = self.printed.get(event.job_id)
        if self._full() or (shown is not None and shown not in {"failed", *_IN_FLIGHT}):
            return
        if shown is not None and event.status == "failed" and event.duplicate:
            return
        if self._as_json:
            sys.stdout.write(encode(event).decode() + "\n")
            sys.stdout.flush()
        else:
            for line in event_lines(event, self._width):
                self._console.print(line)
        self._seen(event.job_id, event.status)

    def job(self, job: JobRecord) -> None:
        if job.result is not None:
            self.event(job.result)
        elif not self._as_json and not self._full():
            # Scripts get result events only, as before; people also see what is in flight.
            for line in job_lines(job, self._width):
                self._console.print(line)
            self._seen(job.job_id, job.status)

    def notice(self, notice: JobNotice) -> None:
        """A job's `running` notice, for people: shown while the job has no result shown.

        Not counted toward `count`: the job's result will be.
        """
        shown = self.printed.get(notice.job_id)
        if self._as_json or self._full() or (shown is not None and shown not in _IN_FLIGHT):
            return
        for line in job_lines(JobRecord.from_event(notice), self._width):
            self._console.print(line)
        self.printed.setdefault(notice.job_id, notice.status)

    def _seen(self, job_id: str, status: str) -> None:
        self.printed[job_id] = status
        # A job counted in flight (from history) counts once: as what it became.
        if (counted := self._in_flight.pop(job_id, None)) is not None:
            self.statuses[counted] -= 1
            self.statuses += Counter()  # drops the zero
        if status in _IN_FLIGHT:
            self._in_flight[job_id] = status
        self.statuses[status] += 1
        if self._full():
            self.done.set()

    def summary(self) -> str:
        total = sum(self.statuses.values())
        parts = ", ".join(f"{n} {s}" for s, n in self.statuses.most_common())
        return f"{total} shown" + (f": {parts}" if parts else "")


async def _replay(
    settings: Settings, printer: _Printer, since: datetime, selection: dict[str, str | None]
) -> None:
    """Print the jobs recorded since `since`, oldest first."""
    async with opened_job_store(settings.database) as jobs:
        history = await jobs.list(**selection, since=since, limit=_REPLAY_LIMIT, oldest_first=True)
    for job in history:
        printer.job(job)


async def run_tail(
    settings: Settings,
    *,
    as_json: bool,
    app: str | None = None,
    cluster: str | None = None,
    service: str | None = None,
    action: str | None = None,
    status: str | None = None,
    count: int | None = None,
    since: datetime | None = None,
    wide: bool = False,
) -> int:
    """Print matching result events until interrupted (or `count` were printed)."""
    printer = _Printer(as_json=as_json, count=count, wide=wide)
    selection = {
        "cluster": cluster,
        "app": app,
        "service": service,
        "action": action,
        "status": status,
    }
    bus = AmqpBus.from_settings(settings, "tail")
    try:
        await bus.start()
    except BrokerUnavailable as exc:
        if since is None:
            click.echo(
                f"triggers tail: {exc}; live results need RabbitMQ "
                "(--since replays the history without it)",
                err=True,
            )
            return 2
        # `triggers dev` on its in-process bus, or a broker outage: the history is in the
        # store all the same, so replay it and say why nothing live follows.
        await _replay(settings, printer, since, selection)
        click.echo(
            "RabbitMQ is not reachable, so this is the history only, no live results "
            f"({redact(settings.amqp_url)}).",
            err=True,
        )
        if not as_json:
            click.echo(printer.summary(), err=True)
        return 0
    held: list[ResultEvent | JobNotice] | None = [] if since is not None else None

    async def on_event(event: ResultEvent | JobNotice) -> None:
        # The service is not in the routing key; it is filtered here.
        if service is not None and event.service != service:
            return
        if held is not None:
            held.append(event)
        else:
            show(event)

    def show(event: ResultEvent | JobNotice) -> None:
        if isinstance(event, JobNotice):
            printer.notice(event)
        else:
            printer.event(event)

    binding = result_binding(status=status, action=action, cluster=cluster, app=app)
    with on_stop_signal(printer.done.set):
        try:
            # Scripts (--json) get result events only, as before.
            notices = None if as_json else on_event
            await bus.subscribe_results(on_event, binding=binding, notices=notices)
            if since is not None and held is not None:
                await _replay(settings, printer, since, selection)
                while held:
                    show(held.pop(0))
                held = None
            if not as_json:
                click.echo(f"Waiting for results ({binding}); Ctrl-C to stop.", err=True)
            if count is None or count > 0:
                await printer.done.wait()
        finally:
            await bus.close()
    if not as_json:
        click.echo(printer.summary(), err=True)
    return 0


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@only_app
@only_cluster
@only_service
@only_action
@click.option(
    "--status",
    type=click.Choice(["succeeded", "failed", "skipped", "rejected", "expired"]),
    help="Only results with this status.",
)
@click.option("--count", type=int, help="Exit after this many events.")
@click.option(
    "--since",
    callback=since,
    help="First replay jobs since a duration ago (15m, 2h, 7d) or a time, from history.",
)
@wide
@click.pass_context
def tail(
    ctx: click.Context,
    as_json: bool,
    app: str | None,
    cluster: str | None,
    service: str | None,
    action: str | None,
    status: str | None,
    count: int | None,
    since: datetime | None,
    wide: bool,
) -> None:
    """Print result events as workers publish them."""
    code = run(
        run_tail(
            settings_of(ctx),
            as_json=as_json,
            app=app,
            cluster=cluster,
            service=service,
            action=action,
            status=status,
            count=count,
            since=since,
            wide=wide,
        )
    )
    sys.exit(code)
