"""The jobs' history: `triggers history` and `triggers job`, from the store the recorder
writes, or with ``--server`` through a gateway's admin API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

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
from triggers.render import job_detail, job_table, print_lines

__all__ = ["history", "job"]


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
