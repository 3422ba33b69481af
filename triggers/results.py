"""What became of the commands: `triggers history`, `job`, `tail` and `dlq list|replay|purge`,
from the store and the broker, or with ``--server`` through a gateway's admin API."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click

from shared.dlq import list_dead, purge_dead, replay_dead
from shared.jobs import (
    JOB_STATUSES,
    JobLookupError,
    JobRecord,
    job_by_prefix,
    job_json,
    opened_job_store,
)
from shared.loop import run
from triggers.operations import remote
from triggers.options import (
    echo_json,
    echo_struct,
    json_array,
    json_object,
    only_action,
    only_app,
    only_cluster,
    only_service,
    remote_options,
    settings_of,
    since,
    wide,
    width,
)
from triggers.render import dlq_table, job_detail, job_table, print_lines
from triggers.tail import run_tail

__all__ = ["dlq", "history", "job", "tail"]


@click.command()
@only_cluster
@only_app
@only_service
@only_action
@click.option(
    "--status",
    type=click.Choice(JOB_STATUSES),
    help="Only jobs in this state.",
)
@click.option(
    "--since",
    callback=since,
    help="Only jobs since a duration ago (15m, 2h, 7d) or a time (ISO 8601).",
)
@click.option(
    "--limit", default=50, show_default=True, type=click.IntRange(1, 1000), help="At most N jobs."
)
@remote_options
@wide
@json_array
@click.pass_context
def history(
    ctx: click.Context,
    cluster: str | None,
    app: str | None,
    service: str | None,
    action: str | None,
    status: str | None,
    since: datetime | None,
    limit: int,
    server: str | None,
    token: str | None,
    wide: bool,
    as_json: bool,
) -> None:
    """Jobs the recorder kept, newest first (from the store, or a gateway with --server)."""
    filters: dict[str, Any] = {"cluster": cluster, "app": app, "service": service}
    filters.update(action=action, status=status)

    async def read() -> list[JobRecord]:
        async with opened_job_store(settings_of(ctx).database) as store:
            return await store.list(**filters, since=since, limit=limit)

    if server:
        query = {**filters, "since": since.isoformat() if since else None, "limit": limit}
        jobs = remote(server, token, lambda admin: admin.jobs(query))
    else:
        jobs = run(read())
    if as_json:
        echo_json([job_json(job) for job in jobs])
    elif jobs:
        print_lines(job_table(jobs, width(wide)))
    else:
        click.echo("No jobs match. Is `triggers recorder` running? (`triggers dev` runs one.)")


@click.command()
@click.argument("job_id")
@remote_options
@wide
@json_object
@click.pass_context
def job(
    ctx: click.Context,
    job_id: str,
    server: str | None,
    token: str | None,
    wide: bool,
    as_json: bool,
) -> None:
    """Show one job, as GET /v1/jobs/ID does; a unique prefix of its id is enough."""

    async def read() -> JobRecord:
        async with opened_job_store(settings_of(ctx).database) as store:
            return await job_by_prefix(store, job_id)

    if server:
        found = remote(server, token, lambda admin: admin.job(job_id.lower()))
    else:
        try:
            found = run(read())
        except JobLookupError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(job_json(found))
    else:
        print_lines(job_detail(found, width(wide)))


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
