"""Tools for a checkout and a first try: `triggers bench` and `triggers local` (the
simulated cluster `triggers dev` and the local orchestrator use)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from shared.loop import run
from triggers.options import check_names, echo_json, json_object, settings_of
from workers.orchestrators.local import LocalCluster

__all__ = ["bench", "local"]


@click.command()
@click.option("--seconds", default=5.0, show_default=True, help="Length of each load run.")
@click.option("--connections", default=64, show_default=True, help="Load generator connections.")
@click.option("--calls", default=5000, show_default=True, help="End-to-end calls.")
@click.option("--in-flight", default=64, show_default=True, help="End-to-end calls in flight.")
@click.option(
    "--rounds",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rounds, each row the median: our gateway and the plain one alternately, and"
    " end to end ours, the plain pipeline and Celery.",
)
@click.option(
    "--open-rate",
    default=200.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Open loop: calls per second at the fixed rate (also run at 50% of capacity).",
)
@click.option(
    "--open-seconds",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Open loop: seconds at each rate.",
)
@click.option(
    "--memory-calls",
    default=100_000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Memory: commands through a fresh gateway and worker (0: skip).",
)
@click.option("--processes", default=2, show_default=True, help="Gateway processes.")
@click.option(
    "--e2e-processes",
    default=1,
    show_default=True,
    help="Gateway processes end to end (the worker and the broker share the cores).",
)
@click.option("--peers/--no-peers", default=True, help="Measure adnanh/webhook and Celery.")
@click.option("--setup/--no-setup", default=True, help="apt-get install missing peer tools.")
@click.option("--wrk/--python-load", "use_wrk", default=True, help="Load generator.")
@click.option(
    "--broker",
    default="amqp://guest:guest@127.0.0.1:5672",
    show_default=True,
    help="RabbitMQ the runs use: one AMQP URL, or a cluster's nodes, comma-separated.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write JSON here.")
@click.option("--keep", type=click.Path(file_okay=False), help="Keep the logs in this directory.")
def bench(
    seconds: float,
    connections: int,
    calls: int,
    in_flight: int,
    rounds: int,
    open_rate: float,
    open_seconds: float,
    memory_calls: int,
    processes: int,
    e2e_processes: int,
    peers: bool,
    setup: bool,
    use_wrk: bool,
    broker: str,
    json_path: str | None,
    keep: str | None,
) -> None:
    """Measure the gateway and the pipeline against the ceilings and peers, in one run."""
    try:
        from bench.harness import BenchConfig, run_bench  # noqa: PLC0415 - a checkout only
        from bench.table import render  # noqa: PLC0415 - as above
    except ImportError as exc:
        msg = (
            f"`triggers bench` is a development tool ({exc}): run it from a checkout, "
            "installed with pip install -e '.[bench]'"
        )
        raise click.ClickException(msg) from None

    config = BenchConfig(
        seconds=seconds,
        connections=connections,
        calls=calls,
        in_flight=in_flight,
        rounds=rounds,
        open_rate=open_rate,
        open_seconds=open_seconds,
        memory_calls=memory_calls,
        gateway_processes=processes,
        e2e_processes=e2e_processes,
        peers=peers,
        setup=setup,
        use_wrk=use_wrk,
        broker=broker,
        keep=Path(keep) if keep else None,
    )
    try:
        report = run(run_bench(config, say=lambda text: click.echo(text, err=True)))
    except asyncio.CancelledError:
        click.echo(
            "bench: stopped by a signal; what it started is stopped, its vhost deleted", err=True
        )
        sys.exit(143)
    click.echo(render(report))
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_json(), indent=2))


@click.group()
def local() -> None:
    """Seed and inspect the local simulated cluster."""


@local.command("set-app")
@click.option("--cluster", required=True, help="Cluster name (created if new).")
@click.option("--app", required=True, help="Application name (created if new).")
@click.option("--service", required=True, help="Service name (created if new).")
@click.option("--replicas", required=True, type=click.IntRange(min=0), help="Replica count.")
@click.option("--image", help="Image reference; default <service>:latest for a new service.")
@click.pass_context
def local_set_app(
    ctx: click.Context, cluster: str, app: str, service: str, replicas: int, image: str | None
) -> None:
    """Create or update one service of an application."""
    check_names(cluster=cluster, app=app, service=service)
    state = LocalCluster(settings_of(ctx).local_state).set_service(
        cluster, app, service, replicas=replicas, image=image
    )
    click.echo(
        f"{cluster}/{app}/{service}: {state.replicas} replicas of {state.image}, revision {state.revision}"
    )


@local.command("show")
@json_object
@click.pass_context
def local_show(ctx: click.Context, as_json: bool) -> None:
    """Print the local cluster's applications and services."""
    snapshot = LocalCluster(settings_of(ctx).local_state).snapshot()
    if as_json:
        echo_json(snapshot)
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
