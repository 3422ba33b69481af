"""The `triggers` command line."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, TypeVar

import click

from shared.logging import configure_logging
from shared.settings import Settings
from shared.store import TriggerStore, open_store
from shared.triggers import SignatureScheme, TriggerOptions, new_secret, trigger_call_url

__all__ = ["main"]

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)  # noqa: S101 - set by main() for every command
    return settings


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=None, sort_keys=False))


@click.group()
@click.option("--database", envvar="TRIGGERS_DATABASE", help="Trigger store URL.")
@click.option("--amqp-url", envvar="TRIGGERS_AMQP_URL", help="RabbitMQ URL.")
@click.pass_context
def main(ctx: click.Context, database: str | None, amqp_url: str | None) -> None:
    """Webhook triggers that redeploy and scale container applications."""
    try:
        ctx.obj = Settings.from_env(database=database, amqp_url=amqp_url)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    configure_logging(ctx.obj.log_format, ctx.obj.log_level)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int)
@click.pass_context
def gateway(ctx: click.Context, host: str, port: int) -> None:
    """Serve /hook/trigger: authenticate calls and publish commands."""
    from gateway.app import run_gateway  # noqa: PLC0415 - each service imports only its own code

    run_gateway(_settings(ctx), host, port)


_metrics_port = click.option(
    "--metrics-port", type=click.IntRange(1, 65535), help="Serve Prometheus /metrics on this port."
)
_metrics_host = click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="Address of /metrics."
)


@main.command()
@_metrics_port
@_metrics_host
@click.pass_context
def worker(ctx: click.Context, metrics_port: int | None, metrics_host: str) -> None:
    """Consume commands, apply them to the orchestrator, publish results."""
    from workers.run import run_worker  # noqa: PLC0415

    _run(run_worker(_settings(ctx), metrics_host=metrics_host, metrics_port=metrics_port))


@main.command()
@_metrics_port
@_metrics_host
@click.pass_context
def recorder(ctx: click.Context, metrics_port: int | None, metrics_host: str) -> None:
    """Record every job's progress and result in the store (for history, status and --since)."""
    from workers.run import run_recorder  # noqa: PLC0415

    _run(run_recorder(_settings(ctx), metrics_host=metrics_host, metrics_port=metrics_port))


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    from shared.jobs import parse_since  # noqa: PLC0415

    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.option("--cluster", help="Only this cluster.")
@click.option("--app", help="Only this application.")
@click.option("--service", help="Only this service.")
@click.option("--action", type=click.Choice(["redeploy", "scale"]))
@click.option(
    "--status", type=click.Choice(["accepted", "running", "succeeded", "failed", "skipped"])
)
@click.option(
    "--since", callback=_since, help="Only jobs since a duration ago (15m, 2h, 7d) or a time."
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
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
    as_json: bool,
) -> None:
    """Jobs the recorder kept, newest first."""
    from shared.jobs import job_json, open_job_store  # noqa: PLC0415
    from shared.render import console, job_table  # noqa: PLC0415

    jobs = _run(
        open_job_store(_settings(ctx).database).list(
            cluster=cluster,
            app=app,
            service=service,
            action=action,
            status=status,
            since=since,
            limit=limit,
        )
    )
    if as_json:
        _echo_json([job_json(job) for job in jobs])
    elif jobs:
        console().print(job_table(jobs))
    else:
        click.echo("No jobs match. Is `triggers recorder` running? (`triggers dev` runs one.)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.pass_context
def dev(ctx: click.Context, host: str, port: int) -> None:
    """Everything in one process on a seeded local cluster, for a first try."""
    from shared.dev import run_dev  # noqa: PLC0415

    _run(run_dev(_settings(ctx), host, port))


@main.command()
@click.option("--cluster", required=True, help="Cluster the application runs in.")
@click.option("--app", required=True, help="Application to act on.")
@click.option(
    "--action", required=True, type=click.Choice(["redeploy", "scale"]), help="What a call does."
)
@click.option("--service", help="Service to scale (required for --action scale).")
@click.option("--image-update", is_flag=True, help="Redeploy with the image a registry push names.")
@click.option(
    "--image",
    "image",
    metavar="REPO",
    help="Bind to this image repository: pushes of others are ignored (implies --image-update).",
)
@click.option("--tags", metavar="GLOB[,GLOB]", help="Deploy only pushed tags matching a glob.")
@click.option(
    "--semver", metavar="RANGE", help="Deploy only version tags in range, e.g. '>=1.2,<2'."
)
@click.option(
    "--step", type=int, help="Scale step of an alert when the call gives no step (default 1)."
)
@click.option("--scale-in-on-resolve", is_flag=True, help="Scale back in when the alert resolves.")
@click.option(
    "--cooldown", type=float, metavar="SECONDS", help="One alert (group) acts once per cooldown."
)
@click.option(
    "--signature",
    type=click.Choice(["github", "hmac", "timestamped"]),
    help="Require an HMAC-SHA256 signature of the body in this form.",
)
@click.option(
    "--signing-secret",
    metavar="KEY",
    help="HMAC key (e.g. the GitHub webhook secret); generated and shown once if omitted.",
)
@click.option(
    "--header-secret-only",
    is_flag=True,
    help="Refuse the secret in the query string; take it from a header only.",
)
@click.option(
    "--namespace",
    help="Kubernetes namespace of the application (default: the context's, else default).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def create(
    ctx: click.Context,
    cluster: str,
    app: str,
    action: str,
    service: str | None,
    image_update: bool,
    namespace: str | None,
    image: str | None,
    tags: str | None,
    semver: str | None,
    step: int | None,
    scale_in_on_resolve: bool,
    cooldown: float | None,
    signature: SignatureScheme | None,
    signing_secret: str | None,
    header_secret_only: bool,
    as_json: bool,
) -> None:
    """Create a trigger and print its URL. The secret is shown only now."""
    from shared.render import trigger_json  # noqa: PLC0415

    settings = _settings(ctx)
    store = open_store(settings.database)
    if (image_update or image) and action != "redeploy":
        raise click.UsageError("--image-update applies to redeploy triggers only")
    if signature and not signing_secret:
        signing_secret = new_secret()
    options = TriggerOptions(
        image=image,
        tags=tags,
        semver=semver,
        step=step,
        scale_in_on_resolve=scale_in_on_resolve,
        cooldown=cooldown,
        signature=signature,
        signing_secret=signing_secret,
        header_secret_only=header_secret_only,
    )
    try:
        trigger, secret = _run(
            store.create(
                cluster=cluster,
                app=app,
                action="redeploy" if action == "redeploy" else "scale",
                service=service,
                image_update=image_update or image is not None,
                namespace=namespace,
                options=options,
            )
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    url = trigger_call_url(settings.public_url, trigger, secret)
    if as_json:
        data = trigger_json(trigger, url=url, secret=secret)
        if signing_secret:
            data["signing_secret"] = signing_secret
        _echo_json(data)
        return
    click.echo(
        f"Created {trigger.action} trigger {trigger.id} for {cluster}/{app}"
        + (f" service {service}" if service else "")
        + (f" in namespace {namespace}" if namespace else "")
    )
    click.echo("Keep the URL secret; it cannot be shown again (revoke and create anew if lost).")
    if signing_secret:
        click.echo(f"Signing secret ({signature}): {signing_secret}")
    click.echo("")
    curl = f"curl -X POST '{url}"
    if header_secret_only:
        # This trigger refuses the secret in the URL: show it in a header instead.
        bare, _, _ = url.partition("&secret=")
        curl = f"curl -X POST -H 'X-Trigger-Secret: {secret}' '{bare}"
    if trigger.action == "scale":
        click.echo(f"  {curl}&type=scale_out&step=1'")
        click.echo(f"  {curl}&type=scale_in&step=1'")
    else:
        click.echo(f"  {curl}'")


def _get_or_fail(store: TriggerStore, trigger_id: str) -> Any:
    trigger = _run(store.get(trigger_id))
    if trigger is None:
        raise click.ClickException(f"no trigger {trigger_id!r}; `triggers list` shows them")
    return trigger


@main.command("list")
@click.option("--cluster")
@click.option("--app")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked triggers.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def list_(
    ctx: click.Context, cluster: str | None, app: str | None, include_revoked: bool, as_json: bool
) -> None:
    """List triggers (secrets are never shown again)."""
    from shared.render import trigger_json, trigger_table  # noqa: PLC0415

    store = open_store(_settings(ctx).database)
    triggers = _run(store.list(cluster=cluster, app=app, include_revoked=include_revoked))
    if as_json:
        _echo_json([trigger_json(t) for t in triggers])
    elif triggers:
        click.echo(trigger_table(triggers))
    else:
        click.echo(
            "No triggers. Create one with: triggers create --cluster C --app A --action redeploy"
        )


@main.command()
@click.argument("trigger_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, trigger_id: str, as_json: bool) -> None:
    """Show one trigger."""
    from shared.render import trigger_json  # noqa: PLC0415

    trigger = _get_or_fail(open_store(_settings(ctx).database), trigger_id)
    data = trigger_json(trigger)
    if as_json:
        _echo_json(data)
        return
    for key, value in data.items():
        click.echo(f"{key + ':':14} {value if value is not None else '-'}")


@main.command()
@click.argument("trigger_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def revoke(ctx: click.Context, trigger_id: str, as_json: bool) -> None:
    """Revoke a trigger: calls answer 403 within a few seconds."""
    from shared.render import trigger_json  # noqa: PLC0415

    store = open_store(_settings(ctx).database)
    trigger = _run(store.revoke(trigger_id))
    if trigger is None:
        raise click.ClickException(f"no trigger {trigger_id!r}; `triggers list` shows them")
    if as_json:
        _echo_json(trigger_json(trigger))
    else:
        click.echo(f"Revoked {trigger.id}.")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--app", help="Only this application.")
@click.option("--cluster", help="Only this cluster.")
@click.option("--service", help="Only this service.")
@click.option("--action", type=click.Choice(["redeploy", "scale"]))
@click.option("--status", type=click.Choice(["succeeded", "failed", "skipped"]))
@click.option("--count", type=int, help="Exit after this many events.")
@click.option(
    "--since",
    callback=_since,
    help="First replay jobs since a duration ago (15m, 2h, 7d) or a time, from history.",
)
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
) -> None:
    """Print result events as workers publish them."""
    from shared.tail import run_tail  # noqa: PLC0415

    code = _run(
        run_tail(
            _settings(ctx),
            as_json=as_json,
            app=app,
            cluster=cluster,
            service=service,
            action=action,
            status=status,
            count=count,
            since=since,
        )
    )
    sys.exit(code)


@main.group()
def dlq() -> None:
    """Inspect, replay or purge dead-lettered commands."""


@dlq.command("list")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@click.pass_context
def dlq_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Show dead messages and why each died; they stay in the queue."""
    import msgspec  # noqa: PLC0415

    from shared.dlq import list_dead  # noqa: PLC0415

    dead = _run(list_dead(_settings(ctx), limit))
    if as_json:
        for message in dead:
            click.echo(msgspec.json.encode(message).decode())
        return
    if not dead:
        click.echo("The dead-letter queue is empty.")
    for m in dead:
        target = "/".join(p for p in (m.cluster, m.app, m.service) if p) or "(undecodable)"
        click.echo(f"{m.id}  {m.action or '-':8} {target}  {m.died_at or ''}")
        click.echo(f"    {m.reason}")


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every replayable message.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dlq_replay(ctx: click.Context, ids: tuple[str, ...], replay_all: bool, as_json: bool) -> None:
    """Send dead commands back to their queue; applied ones change nothing."""
    from shared.dlq import replay_dead  # noqa: PLC0415

    if bool(ids) == replay_all:
        raise click.UsageError("give message ids (from `triggers dlq list`) or --all")
    outcome = _run(replay_dead(_settings(ctx), None if replay_all else set(ids)))
    if as_json:
        _echo_json(outcome)
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
@click.pass_context
def dlq_purge(ctx: click.Context, yes: bool) -> None:
    """Drop every dead message."""
    from shared.dlq import purge_dead  # noqa: PLC0415

    if not yes:
        click.confirm("Drop every message in the dead-letter queue?", abort=True)
    click.echo(f"Purged {_run(purge_dead(_settings(ctx)))} messages.")


@main.group()
def local() -> None:
    """Seed and inspect the local simulated cluster."""


@local.command("set-app")
@click.option("--cluster", required=True)
@click.option("--app", required=True)
@click.option("--service", required=True)
@click.option("--replicas", required=True, type=click.IntRange(min=0))
@click.option("--image", help="Image reference; default <service>:latest for a new service.")
@click.pass_context
def local_set_app(
    ctx: click.Context, cluster: str, app: str, service: str, replicas: int, image: str | None
) -> None:
    """Create or update one service of an application."""
    from shared.triggers import validate_name  # noqa: PLC0415
    from workers.orchestrators.local import LocalCluster  # noqa: PLC0415

    try:
        for kind, value in (("cluster", cluster), ("app", app), ("service", service)):
            validate_name(kind, value)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    state = LocalCluster(_settings(ctx).local_state).set_service(
        cluster, app, service, replicas=replicas, image=image
    )
    click.echo(
        f"{cluster}/{app}/{service}: {state.replicas} replicas of {state.image}, revision {state.revision}"
    )


@local.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def local_show(ctx: click.Context, as_json: bool) -> None:
    """Print the local cluster's applications and services."""
    from workers.orchestrators.local import LocalCluster  # noqa: PLC0415

    snapshot = LocalCluster(_settings(ctx).local_state).snapshot()
    if as_json:
        _echo_json(snapshot)
        return
    if not snapshot["clusters"]:
        click.echo("The local cluster is empty; seed it with `triggers local set-app`.")
    for cluster, c in snapshot["clusters"].items():
        for app, a in c["apps"].items():
            click.echo(f"{cluster}/{app}")
            for service, s in a["services"].items():
                click.echo(
                    f"  {service:20} replicas={s['replicas']:<4} revision={s['revision']:<4} {s['image']}"
                )
