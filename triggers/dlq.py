"""`triggers dlq list|replay|purge`: the dead-letter queue, through the broker, or with
``--server`` through a gateway's admin API."""

from __future__ import annotations

import sys

import click

from shared.dlq import list_dead, purge_dead, replay_dead
from shared.loop import run
from triggers.operations import remote
from triggers.options import (
    echo_json,
    echo_struct,
    json_array,
    json_object,
    remote_options,
    settings_of,
    wide,
    width,
)
from triggers.render import dlq_table, print_lines

__all__ = ["dlq"]


@click.group()
def dlq() -> None:
    """Inspect, replay or purge dead-lettered commands."""


@dlq.command("list")
@click.option(
    "--limit", default=100, show_default=True, type=click.IntRange(1, 10_000), help="At most N."
)
@remote_options
@wide
@json_array
@click.pass_context
def dlq_list(
    ctx: click.Context, limit: int, server: str | None, token: str | None, wide: bool, as_json: bool
) -> None:
    """Show dead messages and why each died; they stay in the queue."""
    if server:
        dead = remote(server, token, lambda admin: admin.dead(limit))
    else:
        dead = run(list_dead(settings_of(ctx), limit))
    if as_json:
        echo_struct(dead)
    elif not dead:
        click.echo("The dead-letter queue is empty.")
    else:
        print_lines(dlq_table(dead, width(wide)))


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every replayable message.")
@remote_options
@json_object
@click.pass_context
def dlq_replay(
    ctx: click.Context,
    ids: tuple[str, ...],
    replay_all: bool,
    server: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Send dead commands back to their queue; applied ones change nothing."""
    if bool(ids) == replay_all:
        raise click.UsageError("give message ids (from `triggers dlq list`) or --all")
    chosen = None if replay_all else list(ids)
    if server:
        outcome = remote(server, token, lambda admin: admin.replay(chosen))
    else:
        outcome = run(replay_dead(settings_of(ctx), None if chosen is None else set(chosen)))
    if as_json:
        echo_json(outcome)
    else:
        click.echo(
            f"Replayed {len(outcome['replayed'])}; kept {len(outcome['kept'])} in the queue."
        )
        for missing in outcome["not_found"]:
            click.echo(f"  not found: {missing}", err=True)
    if outcome["not_found"]:
        sys.exit(1)


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@remote_options
@click.pass_context
def dlq_purge(ctx: click.Context, yes: bool, server: str | None, token: str | None) -> None:
    """Drop every dead message."""
    if not yes:
        click.confirm("Drop every message in the dead-letter queue?", abort=True)
    if server:
        purged = remote(server, token, lambda admin: admin.purge())
    else:
        purged = run(purge_dead(settings_of(ctx)))
    click.echo(f"Purged {purged} messages.")
