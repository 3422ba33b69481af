"""The `triggers` command line."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from shared.logging import configure_logging
from shared.loop import run, tune_gc
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.admin import AdminError, TriggerAdmin
    from shared.api import TriggerView
    from triggers.remote import HttpAdmin

__all__ = ["main"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
Operation = Callable[["TriggerAdmin"], Awaitable[T]]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return run(coro)


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)  # noqa: S101 - set by main() for every command
    return settings


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=None, sort_keys=False))


_wide = click.option(
    "--wide", is_flag=True, help="Every column, however wide (default: fit the terminal)."
)


def _width(wide: bool) -> int | None:
    """The width to fit tables to: the terminal's (or $COLUMNS), None with --wide."""
    from triggers.render import console  # noqa: PLC0415

    return None if wide else console().width


class _Commands(click.Group):
    """The command group: a condition an operator can cause ends in one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a bad setting or an unreachable store or broker is one line, exit 1."""
        from shared.errors import BrokerUnavailable, ConfigError, StoreUnavailable  # noqa: PLC0415

        try:
            return super().invoke(ctx)
        except (ConfigError, StoreUnavailable) as exc:
            # StoreUnavailable: at start it names the setting (shared/sql.py store_unavailable).
            raise click.ClickException(str(exc)) from None
        except BrokerUnavailable as exc:
            raise click.ClickException(
                f"{exc}; is RabbitMQ running? check TRIGGERS_AMQP_URL (or --amqp-url)"
            ) from None


@click.group(cls=_Commands)
@click.option(
    "--database",
    envvar="TRIGGERS_DATABASE",
    show_envvar=True,
    help="Trigger and job store: sqlite:///triggers.db (default) or postgresql://...",
)
@click.option(
    "--amqp-url",
    envvar="TRIGGERS_AMQP_URL",
    show_envvar=True,
    help="RabbitMQ URL, or a cluster's node URLs separated by commas.",
)
@click.version_option(package_name="container-triggers", prog_name="triggers")
@click.pass_context
def main(ctx: click.Context, database: str | None, amqp_url: str | None) -> None:
    """Webhook triggers that redeploy and scale container applications."""
    try:
        ctx.obj = Settings.from_env(database=database, amqp_url=amqp_url)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    configure_logging(ctx.obj.log_format, ctx.obj.log_level)


@main.command()
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
    from gateway.app import run_gateway  # noqa: PLC0415 - each service imports only its own code

    settings = _settings(ctx).with_(tls_cert=tls_cert, tls_key=tls_key)
    if metrics_port is not None:
        settings = settings.with_(metrics_port=metrics_port)
    if metrics_host is not None:
        settings = settings.with_(metrics_host=metrics_host)
    run_gateway(settings, host, port, processes)


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

    tune_gc()
    _run(run_worker(_settings(ctx), metrics_host=metrics_host, metrics_port=metrics_port))


@main.command()
@_metrics_port
@_metrics_host
@click.pass_context
def recorder(ctx: click.Context, metrics_port: int | None, metrics_host: str) -> None:
    """Record every job's progress and result in the store (for history, status and --since)."""
    from workers.run import run_recorder  # noqa: PLC0415

    tune_gc()
    _run(run_recorder(_settings(ctx), metrics_host=metrics_host, metrics_port=metrics_port))


def _remote_options(fn: F) -> F:
    fn = click.option(
        "--token",
        envvar="TRIGGERS_ADMIN_TOKEN",
        show_envvar=True,
        help="Admin token for --server (prefer $TRIGGERS_ADMIN_TOKEN: flags show in `ps`).",
    )(fn)
    return click.option(
        "--server",
        envvar="TRIGGERS_SERVER",
        show_envvar=True,
        help="Gateway URL: work through its admin API instead of the local store.",
    )(fn)


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
@click.option("--action", type=click.Choice(["redeploy", "scale"]), help="Only this action.")
@click.option(
    "--status",
    type=click.Choice(
        [
            "pending_approval",
            "accepted",
            "running",
            "succeeded",
            "failed",
            "skipped",
            "rejected",
            "expired",
        ]
    ),
    help="Only jobs in this state.",
)
@click.option(
    "--since",
    callback=_since,
    help="Only jobs since a duration ago (15m, 2h, 7d) or a time (ISO 8601).",
)
@click.option(
    "--limit", default=50, show_default=True, type=click.IntRange(1, 1000), help="At most N jobs."
)
@_remote_options
@_wide
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
    server: str | None,
    token: str | None,
    wide: bool,
    as_json: bool,
) -> None:
    """Jobs the recorder kept, newest first (from the store, or a gateway with --server)."""
    from shared.jobs import JobRecord, job_json, opened_job_store  # noqa: PLC0415
    from triggers.render import job_table, print_lines  # noqa: PLC0415

    filters: dict[str, Any] = {"cluster": cluster, "app": app, "service": service}
    filters.update(action=action, status=status)

    async def read() -> list[JobRecord]:
        async with opened_job_store(_settings(ctx).database) as store:
            return await store.list(**filters, since=since, limit=limit)

    if server:
        query = {**filters, "since": since.isoformat() if since else None, "limit": limit}
        jobs = _remote(server, token, lambda admin: admin.jobs(query))
    else:
        jobs = _run(read())
    if as_json:
        _echo_json([job_json(job) for job in jobs])
    elif jobs:
        print_lines(job_table(jobs, _width(wide)))
    else:
        click.echo("No jobs match. Is `triggers recorder` running? (`triggers dev` runs one.)")


@main.command()
@click.argument("job_id")
@_remote_options
@_wide
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
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
    from shared.jobs import (  # noqa: PLC0415
        JobLookupError,
        JobRecord,
        job_by_prefix,
        job_json,
        opened_job_store,
    )
    from triggers.render import job_detail, print_lines  # noqa: PLC0415

    async def read() -> JobRecord:
        async with opened_job_store(_settings(ctx).database) as store:
            return await job_by_prefix(store, job_id)

    if server:
        found = _remote(server, token, lambda admin: admin.job(job_id.lower()))
    else:
        try:
            found = _run(read())
        except JobLookupError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        _echo_json(job_json(found))
    else:
        print_lines(job_detail(found, _width(wide)))


@main.command()
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
    from triggers.dev import run_dev  # noqa: PLC0415

    settings = _settings(ctx)
    log_path = None if verbose else log_file
    tune_gc()
    if log_path is None:
        _run(run_dev(settings, host, port, log_file=None))
        return
    try:
        logs = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - open while dev runs
    except OSError as exc:
        msg = f"cannot write {log_path}: {exc.strerror}"
        raise click.BadParameter(msg, param_hint="--log-file") from None
    with logs:
        # JSON lines: a file is read by tools (jq, grep) more than by eye.
        configure_logging("json", settings.log_level, stream=logs)
        _run(run_dev(settings, host, port, log_file=log_path))


# --- trigger management: the local store, or a gateway's admin API with --server -----

_CLEAR = "none"


class _Limit(click.ParamType[Any]):
    """A whole number within bounds, or "none" to remove the limit (update)."""

    name = "N|none"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) or value is None:
            return value
        if str(value).lower() in (_CLEAR, "off"):
            return _CLEAR
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number (or 'none')", param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{number} is not in {self.low}..{self.high}", param, ctx)
        return number


class _Duration(_Limit):
    """Seconds, or a duration with a unit (90s, 2m, 12h, 30d, 2w); "none" clears it (update)."""

    name = "DURATION"

    def __init__(
        self, low: int = 0, high: int = 10 * 365 * 86400, *, clearable: bool = True
    ) -> None:
        super().__init__(low, high)
        self.clearable = clearable

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from shared.jobs import parse_duration  # noqa: PLC0415

        if isinstance(value, int) or value is None:
            return value
        if self.clearable and str(value).lower() in (_CLEAR, "off"):
            return _CLEAR
        try:
            seconds = round(parse_duration(str(value)).total_seconds())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not self.low <= seconds <= self.high:
            self.fail(
                f"{value} is not within {_seconds(self.low)}..{_seconds(self.high)}", param, ctx
            )
        return seconds


def _seconds(value: float) -> str:
    """Seconds the way the CLI takes them: 90s, 2m, 12h, 30d."""
    from shared.describe import duration_text  # noqa: PLC0415

    return duration_text(value)


def _collect(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Gather the policy flags given into ``ctx.meta``; "none" clears a limit."""
    if value is None or param.name is None:
        return
    policy = ctx.meta.setdefault("policy", {})
    if param.name == "methods":
        policy["allowed_methods"] = value.upper().split(",")
    elif param.name == "notify":
        names = [] if value.lower() == _CLEAR else value.split(",")
        policy["notify"] = [name.strip() for name in names if name.strip()]
    else:
        policy[param.name] = None if value == _CLEAR else value


def _given_policy(ctx: click.Context) -> dict[str, Any]:
    policy: dict[str, Any] = ctx.meta.get("policy", {})
    return policy


def _policy_options(fn: F) -> F:
    def option(*names: str, **kwargs: Any) -> Callable[[F], F]:
        return click.option(*names, callback=_collect, expose_value=False, **kwargs)

    options = [
        option("--min-replicas", type=_Limit(0, 10_000), help="Scaling never goes below N."),
        option("--max-replicas", type=_Limit(0, 10_000), help="Scaling never goes above N."),
        option(
            "--cooldown",
            type=_Duration(0, 7 * 24 * 3600),
            help="After a call, further calls do nothing for this long (90s, 2m, 1h).",
        ),
        option(
            "--rate-limit",
            type=_Limit(1, 60_000),
            help="CALLS_PER_MINUTE; more are refused with 429 and Retry-After.",
        ),
        option(
            "--expires-in",
            type=_Duration(1, 10 * 365 * 24 * 3600),
            help="Calls are refused after this long from now (12h, 30d, 2w).",
        ),
        option(
            "--methods",
            type=click.Choice(["GET", "POST", "GET,POST"], case_sensitive=False),
            help="HTTP methods the trigger accepts (default GET,POST).",
        ),
        option(
            "--notify",
            metavar="SINK[,SINK]",
            help="Send every result of this trigger to these sinks ('none' for none).",
        ),
        option(
            "--approvals",
            type=_Limit(0, 10),
            help="N distinct people must approve each call before it runs ('none': no approval).",
        ),
        option(
            "--approval-timeout",
            type=_Duration(),
            help="How long a call waits for approval (e.g. 1h; default 1h), then expires.",
        ),
        option(
            "--request-id-idempotency/--no-request-id-idempotency",
            default=None,
            help="A call's X-Request-ID serves as its Idempotency-Key when it sends none.",
        ),
    ]
    for add in reversed(options):
        fn = add(fn)
    return fn


def _check_names(**names: str | None) -> None:
    """A usage error naming the first cluster/app/service/namespace that cannot exist."""
    from shared.triggers import validate_name, validate_namespace  # noqa: PLC0415

    try:
        for kind, value in names.items():
            if value is not None and kind == "namespace":
                validate_namespace(value)
            elif value is not None:
                validate_name(kind, value)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _convert(data: dict[str, Any], kind: type[T]) -> T:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        # "... - at `$.min_replicas`" names the flag: "... - at `--min-replicas`".
        message = re.sub(
            r"`\$\.([a-z_]+)`", lambda m: f"`--{m.group(1).replace('_', '-')}`", str(exc)
        )
        raise click.UsageError(message) from None


def _manage(
    ctx: click.Context, server: str | None, token: str | None, operation: Operation[T]
) -> T:
    """Run one operation on the local store, or remotely with --server."""
    from shared.admin import AdminError, StoreAdmin  # noqa: PLC0415
    from shared.store import open_store  # noqa: PLC0415

    settings = _settings(ctx)  # read (and checked) with --server too
    if server:
        return _remote(server, token, operation)

    async def run() -> T:
        admin = StoreAdmin(open_store(settings.database), settings.public_url)
        try:
            return await operation(admin)
        finally:
            await admin.close()

    try:
        return _run(run())
    except AdminError as exc:
        raise _refused(exc) from None


def _refused(exc: AdminError) -> click.ClickException:
    """The operator's input is a usage error (exit 2), wherever it was found; else exit 1."""
    if exc.status in (400, 422):
        return click.UsageError(exc.detail)
    hint = " (set TRIGGERS_ADMIN_TOKEN or pass --token)" if exc.status == 401 else ""
    return click.ClickException(f"{exc.detail}{hint}")


def _remote(server: str, token: str | None, operation: Callable[[HttpAdmin], Awaitable[T]]) -> T:
    """Run one operation through a gateway's admin API (--server)."""
    from shared.admin import AdminError  # noqa: PLC0415
    from triggers.remote import HttpAdmin  # noqa: PLC0415

    async def run() -> T:
        admin = HttpAdmin(server, token)
        try:
            return await operation(admin)
        finally:
            await admin.close()

    try:
        return _run(run())
    except AdminError as exc:
        raise _refused(exc) from None


def _echo_view(view: TriggerView, as_json: bool, headline: str) -> None:
    from triggers.render import trigger_lines  # noqa: PLC0415

    if as_json:
        click.echo(msgspec.json.encode(view).decode())
        return
    click.echo(headline)
    click.echo(trigger_lines(view))


def _echo_url(view: TriggerView) -> None:
    from shared.describe import curl_lines  # noqa: PLC0415

    lines = curl_lines(view)
    if lines:
        click.echo("")
    for line in lines:
        click.echo(f"  {line}")


@main.command()
@click.option("--cluster", required=True, help="Cluster the application runs in.")
@click.option("--app", required=True, help="Application to act on.")
@click.option(
    "--action", required=True, type=click.Choice(["redeploy", "scale"]), help="What a call does."
)
@click.option(
    "--service",
    help="Service to scale (required for --action scale); on a redeploy trigger, the one"
    " service it redeploys (default: every service of the app).",
)
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
    "--alert-cooldown",
    type=_Duration(0, 7 * 24 * 3600, clearable=False),
    help="One alert (group) acts once per this long, e.g. 5m (default TRIGGERS_ALERT_COOLDOWN).",
)
@click.option(
    "--signature",
    type=click.Choice(["github", "hmac", "timestamped", "jfrog", "nexus", "google-oidc"]),
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
    "--oidc-audience",
    metavar="AUDIENCE",
    help="google-oidc: the audience the Pub/Sub push subscription's token must name.",
)
@click.option(
    "--oidc-email",
    metavar="SERVICE_ACCOUNT",
    help="google-oidc: the service account the token must be issued for.",
)
@click.option(
    "--namespace",
    help="Kubernetes namespace of the application (default: the context's, else default).",
)
@_policy_options
@_remote_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def create(
    ctx: click.Context,
    cluster: str,
    app: str,
    action: str,
    service: str | None,
    image_update: bool,
    image: str | None,
    tags: str | None,
    semver: str | None,
    step: int | None,
    scale_in_on_resolve: bool,
    alert_cooldown: int | None,
    signature: str | None,
    signing_secret: str | None,
    header_secret_only: bool,
    oidc_audience: str | None,
    oidc_email: str | None,
    namespace: str | None,
    server: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Create a trigger and print its URL. The secret is shown only now."""
    from shared.api import TriggerCreate  # noqa: PLC0415

    if (image_update or image) and action != "redeploy":
        raise click.UsageError("--image-update applies to redeploy triggers only")
    _check_names(cluster=cluster, app=app, service=service, namespace=namespace)
    policy = _given_policy(ctx)
    request = _convert(
        {
            "cluster": cluster,
            "app": app,
            "action": action,
            "service": service,
            "image_update": image_update or image is not None,
            "namespace": namespace,
            "options": {
                "image": image,
                "tags": tags,
                "semver": semver,
                "step": step,
                "scale_in_on_resolve": scale_in_on_resolve,
                "cooldown": alert_cooldown,
                "signature": signature,
                "signing_secret": signing_secret,
                "header_secret_only": header_secret_only,
                "oidc_audience": oidc_audience,
                "oidc_email": oidc_email,
            },
            **{k: v for k, v in policy.items() if v is not None},
        },
        TriggerCreate,
    )
    view = _manage(ctx, server, token, lambda admin: admin.create(request))
    if as_json:
        _echo_view(view, True, "")
        return
    click.echo(
        f"Created {view.action} trigger {view.id} for {cluster}/{app}"
        + (f" service {service}" if service else "")
        + (f" in namespace {namespace}" if namespace else "")
    )
    click.echo("Keep the URL secret; it cannot be shown again (rotate it if lost).")
    if isinstance(view.signing_secret, str):
        click.echo(f"Signing secret ({signature}): {view.signing_secret}")
    _echo_url(view)


@main.command("list")
@click.option("--cluster", help="Only this cluster.")
@click.option("--app", help="Only this application.")
@click.option("--action", type=click.Choice(["redeploy", "scale"]), help="Only this action.")
@click.option(
    "--status",
    type=click.Choice(["active", "disabled", "expired", "revoked"]),
    help="Only triggers in this state.",
)
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked triggers.")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="At most N triggers.",
)
@_remote_options
@_wide
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def list_(
    ctx: click.Context,
    cluster: str | None,
    app: str | None,
    action: str | None,
    status: str | None,
    include_revoked: bool,
    limit: int,
    server: str | None,
    token: str | None,
    wide: bool,
    as_json: bool,
) -> None:
    """List triggers (secrets are never shown again)."""
    from shared.admin import ListFilter  # noqa: PLC0415
    from triggers.render import print_lines, trigger_table  # noqa: PLC0415

    selection = _convert(
        {
            "cluster": cluster,
            "app": app,
            "action": action,
            "status": status,
            "include_revoked": include_revoked,
            "limit": limit,
        },
        ListFilter,
    )
    page = _manage(ctx, server, token, lambda admin: admin.list(selection))
    if as_json:
        click.echo(msgspec.json.encode(page.triggers).decode())
    elif page.triggers:
        print_lines(trigger_table(page.triggers, _width(wide)))
        if page.next_offset is not None:
            click.echo(f"(first {limit} shown; narrow the filters or raise --limit)")
    else:
        click.echo(
            "No triggers. Create one with: triggers create --cluster C --app A --action redeploy"
        )


@main.command()
@click.argument("trigger_id")
@_remote_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def show(
    ctx: click.Context, trigger_id: str, server: str | None, token: str | None, as_json: bool
) -> None:
    """Show one trigger and its policy."""
    view = _manage(ctx, server, token, lambda admin: admin.get(trigger_id))
    _echo_view(view, as_json, f"Trigger {view.id}")


@main.command()
@click.argument("trigger_id")
@_policy_options
@click.option(
    "--step",
    type=_Limit(1, 100),
    callback=_collect,
    expose_value=False,
    help="Scale step of an alert when the call gives none ('none': 1).",
)
@click.option(
    "--alert-cooldown",
    type=_Duration(0, 86_400),
    callback=_collect,
    expose_value=False,
    help="One alert (group) acts once per this long, e.g. 5m ('none': TRIGGERS_ALERT_COOLDOWN).",
)
@click.option(
    "--scale-in-on-resolve/--no-scale-in-on-resolve",
    "scale_in_on_resolve",
    default=None,
    callback=_collect,
    expose_value=False,
    help="Scale back in when the alert resolves, or not.",
)
@click.option(
    "--enable/--disable",
    "enabled",
    default=None,
    callback=_collect,
    expose_value=False,
    help="Accept calls, or refuse them.",
)
@_remote_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def update(
    ctx: click.Context,
    trigger_id: str,
    server: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Change a trigger's policy and alert options; "none" removes a limit (--max-replicas none)."""
    from shared.policy import PolicyChanges  # noqa: PLC0415

    changes_given = _given_policy(ctx)
    if not changes_given:
        raise click.UsageError("nothing to change; give at least one option (see --help)")
    changes = _convert(changes_given, PolicyChanges)
    view = _manage(ctx, server, token, lambda admin: admin.update(trigger_id, changes))
    _echo_view(view, as_json, f"Updated {view.id}.")


@main.command()
@click.argument("trigger_id")
@click.option(
    "--grace",
    type=_Duration(0, 7 * 24 * 3600, clearable=False),
    default="5m",
    show_default=True,
    help="How long the old secret keeps working (90s, 5m, 1h), so callers switch without a gap.",
)
@_remote_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with url and secret.")
@click.pass_context
def rotate(
    ctx: click.Context,
    trigger_id: str,
    grace: int,
    server: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Give a trigger a new secret; print the new URL (shown only now)."""
    view = _manage(ctx, server, token, lambda admin: admin.rotate(trigger_id, grace))
    if as_json:
        _echo_view(view, True, "")
        return
    click.echo(f"Rotated {view.id}. The old secret works for {_seconds(grace)} more.")
    click.echo(f"New URL (keep it secret): {view.url}")
    _echo_url(view)


@main.command()
@click.argument("trigger_id")
@_remote_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def revoke(
    ctx: click.Context, trigger_id: str, server: str | None, token: str | None, as_json: bool
) -> None:
    """Revoke a trigger: calls answer 403 within a few seconds."""
    view = _manage(ctx, server, token, lambda admin: admin.revoke(trigger_id))
    if as_json:
        _echo_view(view, True, "")
    else:
        click.echo(f"Revoked {view.id}.")


@main.command()
@click.option("--trigger", "trigger_id", help="Only calls of this trigger.")
@click.option(
    "--outcome", type=click.Choice(["accepted", "ignored", "rejected"]), help="Only this outcome."
)
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="At most N calls."
)
@_remote_options
@_wide
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def audit(
    ctx: click.Context,
    trigger_id: str | None,
    outcome: str | None,
    limit: int,
    server: str | None,
    token: str | None,
    wide: bool,
    as_json: bool,
) -> None:
    """The trigger calls, newest first: outcome, reason, caller (never the secret)."""
    from triggers.render import audit_table, print_lines  # noqa: PLC0415

    chosen: Any = outcome
    page = _manage(
        ctx,
        server,
        token,
        lambda admin: admin.audit(trigger_id=trigger_id, outcome=chosen, limit=limit),
    )
    if as_json:
        click.echo(msgspec.json.encode(page.entries).decode())
    elif page.entries:
        print_lines(audit_table(page.entries, _width(wide)))
    else:
        click.echo("No calls recorded" + (f" for {trigger_id}." if trigger_id else "."))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--app", help="Only this application.")
@click.option("--cluster", help="Only this cluster.")
@click.option("--service", help="Only this service.")
@click.option("--action", type=click.Choice(["redeploy", "scale"]), help="Only this action.")
@click.option(
    "--status",
    type=click.Choice(["succeeded", "failed", "skipped", "rejected", "expired"]),
    help="Only results with this status.",
)
@click.option("--count", type=int, help="Exit after this many events.")
@click.option(
    "--since",
    callback=_since,
    help="First replay jobs since a duration ago (15m, 2h, 7d) or a time, from history.",
)
@_wide
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
    from triggers.tail import run_tail  # noqa: PLC0415

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
            wide=wide,
        )
    )
    sys.exit(code)


@main.command()
@click.option("--seconds", default=5.0, show_default=True, help="Length of each load run.")
@click.option("--connections", default=64, show_default=True, help="Load generator connections.")
@click.option("--calls", default=5000, show_default=True, help="End-to-end calls.")
@click.option("--in-flight", default=64, show_default=True, help="End-to-end calls in flight.")
@click.option(
    "--rounds",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="End-to-end rounds, ours and Celery alternately; each row is the median.",
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
    from pathlib import Path  # noqa: PLC0415

    try:
        from bench.harness import BenchConfig, run_bench  # noqa: PLC0415 - a checkout only
        from bench.table import render  # noqa: PLC0415
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
        gateway_processes=processes,
        e2e_processes=e2e_processes,
        peers=peers,
        setup=setup,
        use_wrk=use_wrk,
        broker=broker,
        keep=Path(keep) if keep else None,
    )
    report = _run(run_bench(config, say=lambda text: click.echo(text, err=True)))
    click.echo(render(report))
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_json(), indent=2))


@main.group()
def dlq() -> None:
    """Inspect, replay or purge dead-lettered commands."""


@dlq.command("list")
@click.option(
    "--limit", default=100, show_default=True, type=click.IntRange(1, 10_000), help="At most N."
)
@_remote_options
@_wide
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def dlq_list(
    ctx: click.Context, limit: int, server: str | None, token: str | None, wide: bool, as_json: bool
) -> None:
    """Show dead messages and why each died; they stay in the queue."""
    from shared.dlq import list_dead  # noqa: PLC0415
    from triggers.render import dlq_table, print_lines  # noqa: PLC0415

    if server:
        dead = _remote(server, token, lambda admin: admin.dead(limit))
    else:
        dead = _run(list_dead(_settings(ctx), limit))
    if as_json:
        click.echo(msgspec.json.encode(dead).decode())
    elif not dead:
        click.echo("The dead-letter queue is empty.")
    else:
        print_lines(dlq_table(dead, _width(wide)))


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every replayable message.")
@_remote_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
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
    from shared.dlq import replay_dead  # noqa: PLC0415

    if bool(ids) == replay_all:
        raise click.UsageError("give message ids (from `triggers dlq list`) or --all")
    chosen = None if replay_all else list(ids)
    if server:
        outcome = _remote(server, token, lambda admin: admin.replay(chosen))
    else:
        outcome = _run(replay_dead(_settings(ctx), None if chosen is None else set(chosen)))
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
@_remote_options
@click.pass_context
def dlq_purge(ctx: click.Context, yes: bool, server: str | None, token: str | None) -> None:
    """Drop every dead message."""
    from shared.dlq import purge_dead  # noqa: PLC0415

    if not yes:
        click.confirm("Drop every message in the dead-letter queue?", abort=True)
    if server:
        purged = _remote(server, token, lambda admin: admin.purge())
    else:
        purged = _run(purge_dead(_settings(ctx)))
    click.echo(f"Purged {purged} messages.")


@main.group()
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
    from workers.orchestrators.local import LocalCluster  # noqa: PLC0415

    _check_names(cluster=cluster, app=app, service=service)
    state = LocalCluster(_settings(ctx).local_state).set_service(
        cluster, app, service, replicas=replicas, image=image
    )
    click.echo(
        f"{cluster}/{app}/{service}: {state.replicas} replicas of {state.image}, revision {state.revision}"
    )


@local.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
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


# Notifications and approvals live in their own module; importing it adds its commands.
import triggers.notify_cli  # noqa: E402, F401
