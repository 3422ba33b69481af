"""`triggers tail`: result events, live."""

from __future__ import annotations

import asyncio
import signal
import sys

import click

from shared.bus import AmqpBus
from shared.errors import BrokerUnavailable
from shared.messages import ResultEvent, encode
from shared.render import event_line
from shared.settings import Settings
from shared.topology import result_binding

__all__ = ["run_tail"]


async def run_tail(
    settings: Settings,
    *,
    as_json: bool,
    app: str | None = None,
    cluster: str | None = None,
    action: str | None = None,
    status: str | None = None,
    count: int | None = None,
) -> int:
    """Print matching result events until interrupted (or `count` were printed)."""
    bus = AmqpBus.from_settings(settings, "tail")
    try:
        await bus.start()
    except BrokerUnavailable as exc:
        click.echo(f"triggers tail: {exc}", err=True)
        return 2
    done = asyncio.Event()
    seen = 0
    colour = sys.stdout.isatty()

    async def show(event: ResultEvent) -> None:
        nonlocal seen
        if count is not None and seen >= count:
            return
        if as_json:
            sys.stdout.write(encode(event).decode() + "\n")
        else:
            sys.stdout.write(event_line(event, colour=colour) + "\n")
        sys.stdout.flush()
        seen += 1
        if count is not None and seen >= count:
            done.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    binding = result_binding(status=status, action=action, cluster=cluster, app=app)
    await bus.subscribe_results(show, binding=binding)
    if not as_json:
        click.echo(f"Waiting for results ({binding}); Ctrl-C to stop.", err=True)
    try:
        await done.wait()
    finally:
        await bus.close()
    return 0
