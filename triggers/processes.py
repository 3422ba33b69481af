"""The long-running processes: `triggers gateway`, `worker`, `recorder`, `notifier`, `dev`."""

from __future__ import annotations

import click

from shared.logging import configure_logging
from shared.loop import run, tune_gc
from shared.metrics import serve_metrics
from triggers.options import metrics_host, metrics_port, settings_of

__all__ = ["dev", "gateway", "notifier", "recorder", "worker"]


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address(es) to listen on, comma-separated.",
)
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(min=1, max=64),
    help="Gateway processes sharing the port (SO_REUSEPORT); about one per core.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve /metrics on this port only, not on --port [env TRIGGERS_METRICS_PORT].",
)
@click.option(
    "--metrics-host",
    help="Address of the /metrics port [env TRIGGERS_METRICS_ADDR; default 127.0.0.1].",
)
@click.option(
    "--tls-cert",
    envvar="TRIGGERS_TLS_CERT",
    show_envvar=True,
    type=click.Path(dir_okay=False),
    help="Serve HTTPS with this PEM certificate (chain); needs --tls-key.",
)
@click.option(
    "--tls-key",
    envvar="TRIGGERS_TLS_KEY",
    show_envvar=True,
    type=click.Path(dir_okay=False),
    help="The PEM private key of --tls-cert.",
)
@click.pass_context
def gateway(
    ctx: click.Context,
    host: str,
    port: int,
    processes: int,
    metrics_port: int | None,
    metrics_host: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Serve /hook/trigger: authenticate calls and publish commands."""
    from gateway.app import run_gateway  # noqa: PLC0415 - a process loads only its own service

    settings = settings_of(ctx).with_(tls_cert=tls_cert, tls_key=tls_key)
    if metrics_port is not None:
        settings = settings.with_(metrics_port=metrics_port)
    if metrics_host is not None:
        settings = settings.with_(metrics_host=metrics_host)
    run_gateway(settings, host, port, processes)


@click.command()
@metrics_port
@metrics_host
@click.pass_context
def worker(ctx: click.Context, metrics_port: int | None, metrics_host: str) -> None:
    """Consume commands, apply them to the orchestrator, publish results."""
    from workers.run import run_worker  # noqa: PLC0415 - a process loads only its own service

    tune_gc()
    run(run_worker(settings_of(ctx), metrics_host=metrics_host, metrics_port=metrics_port))


@click.command()
@metrics_port
@metrics_host
@click.pass_context
def recorder(ctx: click.Context, metrics_port: int | None, metrics_host: str) -> None:
    """Record every job's progress and result in the store (for history, status and --since)."""
    from workers.run import run_recorder  # noqa: PLC0415 - a process loads only its own service

    tune_gc()
    run(run_recorder(settings_of(ctx), metrics_host=metrics_host, metrics_port=metrics_port))


@click.command()
@metrics_port
@metrics_host
@click.pass_context
def notifier(ctx: click.Context, metrics_port: int | None, metrics_host: str) -> None:
    """Deliver results to sinks (webhook, Slack, Teams, e-mail); expire unapproved calls."""
    from workers.notifier import run_notifier  # noqa: PLC0415 - a process loads only its own service

    async def serve() -> None:
        runner = (
            await serve_metrics(metrics_host, metrics_port, "notifier") if metrics_port else None
        )
        try:
            await run_notifier(settings_of(ctx))
        finally:
            if runner is not None:
                await runner.cleanup()

    tune_gc()
    run(serve())


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--log-file",
    default="triggers-dev.log",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where the services' log lines go, so the terminal shows only the results.",
)
@click.option("--verbose", is_flag=True, help="Print the services' log lines here instead.")
@click.pass_context
def dev(ctx: click.Context, host: str, port: int, log_file: str, verbose: bool) -> None:
    """Everything in one process on a seeded local cluster, for a first try."""
    from triggers.dev import run_dev  # noqa: PLC0415 - it loads both services

    settings = settings_of(ctx)
    log_path = None if verbose else log_file
    tune_gc()
    if log_path is None:
        run(run_dev(settings, host, port, log_file=None))
        return
    try:
        logs = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - open while dev runs
    except OSError as exc:
        msg = f"cannot write {log_path}: {exc.strerror}"
        raise click.BadParameter(msg, param_hint="--log-file") from None
    with logs:
        # JSON lines: a file is read by tools (jq, grep) more than by eye.
        configure_logging("json", settings.log_level, stream=logs)
        run(run_dev(settings, host, port, log_file=log_path))
