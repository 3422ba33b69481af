"""Trigger management: `triggers create`, `list`, `show`, `update`, `rotate`, `revoke` and
`audit`, on the local store or with ``--server`` through a gateway's admin API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from shared.admin import ListFilter
from shared.api import TriggerCreate, TriggerView
from shared.describe import curl_lines, duration_text
from shared.policy import PolicyChanges
from triggers.operations import manage
from triggers.options import (
    CLEAR,
    Duration,
    Limit,
    check_names,
    convert,
    echo_struct,
    json_array,
    json_object,
    json_option,
    only_action,
    only_app,
    only_cluster,
    remote_options,
    wide,
    width,
)
from triggers.render import audit_table, print_lines, trigger_lines, trigger_table

__all__ = ["audit", "create", "list_", "revoke", "rotate", "show", "update"]

F = TypeVar("F", bound=Callable[..., Any])


def _collect(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Gather the policy flags given into ``ctx.meta``; "none" clears a limit."""
    if value is None or param.name is None:
        return
    policy = ctx.meta.setdefault("policy", {})
    if param.name == "methods":
        policy["allowed_methods"] = value.upper().split(",")
    elif param.name == "notify":
        names = [] if value.lower() == CLEAR else value.split(",")
        policy["notify"] = [name.strip() for name in names if name.strip()]
    else:
        policy[param.name] = None if value == CLEAR else value


def _given_policy(ctx: click.Context) -> dict[str, Any]:
    policy: dict[str, Any] = ctx.meta.get("policy", {})
    return policy


def _policy_options(fn: F) -> F:
    def option(*names: str, **kwargs: Any) -> Callable[[F], F]:
        return click.option(*names, callback=_collect, expose_value=False, **kwargs)

    options = [
        option("--min-replicas", type=Limit(0, 10_000), help="Scaling never goes below N."),
        option("--max-replicas", type=Limit(0, 10_000), help="Scaling never goes above N."),
        option(
            "--cooldown",
            type=Duration(0, 7 * 24 * 3600),
            help="After a call, further calls do nothing for this long (90s, 2m, 1h).",
        ),
        option(
            "--rate-limit",
            type=Limit(1, 60_000),
            help="CALLS_PER_MINUTE; more are refused with 429 and Retry-After.",
        ),
        option(
            "--expires-in",
            type=Duration(1, 10 * 365 * 24 * 3600),
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
            type=Limit(0, 10),
            help="N distinct people must approve each call before it runs ('none': no approval).",
        ),
        option(
            "--approval-timeout",
            type=Duration(),
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


def _echo_view(view: TriggerView, as_json: bool, headline: str) -> None:
    if as_json:
        echo_struct(view)
        return
    click.echo(headline)
    click.echo(trigger_lines(view))


def _echo_url(view: TriggerView) -> None:
    lines = curl_lines(view)
    if lines:
        click.echo("")
    for line in lines:
        click.echo(f"  {line}")


@click.command()
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
    type=Duration(0, 7 * 24 * 3600, clearable=False),
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
@remote_options
@json_object
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
    if (image_update or image) and action != "redeploy":
        raise click.UsageError("--image-update applies to redeploy triggers only")
    check_names(cluster=cluster, app=app, service=service, namespace=namespace)
    policy = _given_policy(ctx)
    request = convert(
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
    view = manage(ctx, server, token, lambda admin: admin.create(request))
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


@click.command("list")
@only_cluster
@only_app
@only_action
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
@remote_options
@wide
@json_array
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
    selection = convert(
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
    page = manage(ctx, server, token, lambda admin: admin.list(selection))
    if as_json:
        echo_struct(page.triggers)
    elif page.triggers:
        print_lines(trigger_table(page.triggers, width(wide)))
        if page.next_offset is not None:
            click.echo(f"(first {limit} shown; narrow the filters or raise --limit)")
    else:
        click.echo(
            "No triggers. Create one with: triggers create --cluster C --app A --action redeploy"
        )


@click.command()
@click.argument("trigger_id")
@remote_options
@json_object
@click.pass_context
def show(
    ctx: click.Context, trigger_id: str, server: str | None, token: str | None, as_json: bool
) -> None:
    """Show one trigger and its policy."""
    view = manage(ctx, server, token, lambda admin: admin.get(trigger_id))
    _echo_view(view, as_json, f"Trigger {view.id}")


@click.command()
@click.argument("trigger_id")
@_policy_options
@click.option(
    "--step",
    type=Limit(1, 100),
    callback=_collect,
    expose_value=False,
    help="Scale step of an alert when the call gives none ('none': 1).",
)
@click.option(
    "--alert-cooldown",
    type=Duration(0, 86_400),
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
@remote_options
@json_object
@click.pass_context
def update(
    ctx: click.Context,
    trigger_id: str,
    server: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Change a trigger's policy and alert options; "none" removes a limit (--max-replicas none)."""
    changes_given = _given_policy(ctx)
    if not changes_given:
        raise click.UsageError("nothing to change; give at least one option (see --help)")
    changes = convert(changes_given, PolicyChanges)
    view = manage(ctx, server, token, lambda admin: admin.update(trigger_id, changes))
    _echo_view(view, as_json, f"Updated {view.id}.")


@click.command()
@click.argument("trigger_id")
@click.option(
    "--grace",
    type=Duration(0, 7 * 24 * 3600, clearable=False),
    default="5m",
    show_default=True,
    help="How long the old secret keeps working (90s, 5m, 1h), so callers switch without a gap.",
)
@remote_options
@json_option("Print one JSON object with url and secret.")
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
    view = manage(ctx, server, token, lambda admin: admin.rotate(trigger_id, grace))
    if as_json:
        _echo_view(view, True, "")
        return
    click.echo(f"Rotated {view.id}. The old secret works for {duration_text(grace)} more.")
    click.echo(f"New URL (keep it secret): {view.url}")
    _echo_url(view)


@click.command()
@click.argument("trigger_id")
@remote_options
@json_object
@click.pass_context
def revoke(
    ctx: click.Context, trigger_id: str, server: str | None, token: str | None, as_json: bool
) -> None:
    """Revoke a trigger: calls answer 403 within a few seconds."""
    view = manage(ctx, server, token, lambda admin: admin.revoke(trigger_id))
    if as_json:
        _echo_view(view, True, "")
    else:
        click.echo(f"Revoked {view.id}.")


@click.command()
@click.option("--trigger", "trigger_id", help="Only calls of this trigger.")
@click.option(
    "--outcome", type=click.Choice(["accepted", "ignored", "rejected"]), help="Only this outcome."
)
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="At most N calls."
)
@remote_options
@wide
@json_array
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
    chosen: Any = outcome
    page = manage(
        ctx,
        server,
        token,
        lambda admin: admin.audit(trigger_id=trigger_id, outcome=chosen, limit=limit),
    )
    if as_json:
        echo_struct(page.entries)
    elif page.entries:
        print_lines(audit_table(page.entries, width(wide)))
    else:
        click.echo("No calls recorded" + (f" for {trigger_id}." if trigger_id else "."))
