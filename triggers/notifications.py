"""The notification and approval commands of `triggers`.

``triggers sink create|list|test|delete``; ``triggers notify test SINK`` and ``triggers
notify route add|list|delete``; ``triggers approvals``, ``triggers approve JOB_ID`` and
``triggers reject JOB_ID --reason TEXT``. Each works on the local database, or with
``--server`` through a gateway's admin API, like trigger management.
"""

from __future__ import annotations

import getpass
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from shared.approvals import ApprovalList, ApprovalView
from shared.broker import AmqpBus
from shared.errors import BrokerUnavailable
from shared.jobs import open_job_store
from shared.notify_admin import (
    ApproveRequest,
    NotifyAdmin,
    RejectRequest,
    RouteList,
    SinkList,
    SinkTest,
    StoreNotifyAdmin,
)
from shared.notify_store import (
    ApprovalState,
    RouteCreate,
    RouteView,
    SinkCreate,
    SinkView,
    open_notify_store,
)
from shared.store import open_store
from triggers.operations import run_operation
from triggers.options import (
    Duration,
    convert,
    echo_struct,
    json_array,
    json_option,
    remote_options,
    settings_of,
)
from triggers.remote import HttpAdmin

__all__ = ["approvals", "approve", "notify", "reject", "sink"]

T = TypeVar("T")

_json = json_option("Print JSON.")


class HttpNotifyAdmin(HttpAdmin):
    """The operations through a gateway's admin API."""

    async def create_sink(self, request: SinkCreate) -> SinkView:
        """POST /v1/sinks."""
        return await self._call("POST", "/v1/sinks", SinkView, body=request)

    async def list_sinks(self) -> SinkList:
        """GET /v1/sinks."""
        return await self._call("GET", "/v1/sinks", SinkList)

    async def delete_sink(self, name: str) -> SinkView:
        """DELETE /v1/sinks/{name}."""
        return await self._call("DELETE", f"/v1/sinks/{name}", SinkView)

    async def test_sink(self, name: str) -> SinkTest:
        """POST /v1/sinks/{name}/test."""
        return await self._call("POST", f"/v1/sinks/{name}/test", SinkTest)

    async def add_route(self, request: RouteCreate) -> RouteView:
        """POST /v1/routes."""
        return await self._call("POST", "/v1/routes", RouteView, body=request)

    async def list_routes(self) -> RouteList:
        """GET /v1/routes."""
        return await self._call("GET", "/v1/routes", RouteList)

    async def delete_route(self, route_id: int) -> RouteView:
        """DELETE /v1/routes/{id}."""
        return await self._call("DELETE", f"/v1/routes/{route_id}", RouteView)

    async def list_approvals(self, state: ApprovalState | None) -> ApprovalList:
        """GET /v1/approvals."""
        return await self._call(
            "GET", "/v1/approvals", ApprovalList, params={"state": state or "all"}
        )

    async def approve(self, job_id: str, approver: str) -> ApprovalView:
        """POST /v1/approvals/{job_id}/approve."""
        body = ApproveRequest(approver=approver)
        return await self._call("POST", f"/v1/approvals/{job_id}/approve", ApprovalView, body=body)

    async def reject(self, job_id: str, approver: str, reason: str) -> ApprovalView:
        """POST /v1/approvals/{job_id}/reject."""
        body = RejectRequest(reason=reason, approver=approver)
        return await self._call("POST", f"/v1/approvals/{job_id}/reject", ApprovalView, body=body)


def manage_notify(
    ctx: click.Context,
    server: str | None,
    token: str | None,
    operation: Callable[[NotifyAdmin], Awaitable[T]],
    *,
    needs_broker: bool = False,
) -> T:
    """Run one sink, route or approval operation locally (the database, and the broker when
    deciding an approval) or remotely with --server."""
    settings = settings_of(ctx)

    async def open_admin() -> NotifyAdmin:
        if server:
            return HttpNotifyAdmin(server, token)
        bus = None
        if needs_broker:
            bus = AmqpBus.from_settings(settings, "cli")
            await bus.start()
        return StoreNotifyAdmin(
            open_notify_store(settings.database),
            open_store(settings.database),
            bus,
            public_url=settings.public_url,
            jobs=open_job_store(settings.database) if needs_broker else None,
            smtp_cafile=settings.smtp_cafile,
        )

    try:
        return run_operation(open_admin, operation)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def sink() -> None:
    """Where notifications go: signed webhooks, Slack, Teams, e-mail."""


@sink.command("create")
@click.option("--name", required=True, help="The sink's name, used by --notify and routes.")
@click.option(
    "--type",
    "kind",
    required=True,
    type=click.Choice(["webhook", "slack", "teams", "email"]),
    help="Where the sink delivers.",
)
@click.option(
    "--url",
    required=True,
    help="The endpoint; for email the SMTP server, smtp://user:password@host:587 (STARTTLS).",
)
@click.option("--to", "to", multiple=True, help="email: a recipient (repeat for more).")
@click.option("--from", "sender", help="email: the sender address.")
@click.option(
    "--digest",
    type=Duration(),
    help="email: one mail per this interval (e.g. 15m) listing every result, not one each.",
)
@remote_options
@json_option("Print one JSON object (with `secret`).")
@click.pass_context
def sink_create(
    ctx: click.Context,
    name: str,
    kind: str,
    url: str,
    to: tuple[str, ...],
    sender: str | None,
    digest: int | None,
    server: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Create a sink. A webhook's signing secret (whsec_...) is shown only now."""
    recipients = [address.strip() for entry in to for address in entry.split(",") if address]
    request = convert(
        {
            "name": name,
            "type": kind,
            "url": url,
            "to": recipients,
            "sender": sender,
            "digest": digest,
        },
        SinkCreate,
    )
    try:
        request.check()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    view = manage_notify(ctx, server, token, lambda admin: admin.create_sink(request))
    if as_json:
        echo_struct(view)
        return
    click.echo(f"Created {view.type} sink {view.name} ({view.url}).")
    if isinstance(view.secret, str):
        click.echo(f"Signing secret (shown only now; receivers verify with it): {view.secret}")


@sink.command("list")
@remote_options
@json_array
@click.pass_context
def sink_list(ctx: click.Context, server: str | None, token: str | None, as_json: bool) -> None:
    """List sinks (their secrets are never shown again)."""
    page = manage_notify(ctx, server, token, lambda admin: admin.list_sinks())
    if as_json:
        echo_struct(page.sinks)
        return
    if not page.sinks:
        click.echo(
            "No sinks. Create one with: triggers sink create --name N --type slack --url URL"
        )
    for s in page.sinks:
        to = f"  to {', '.join(s.to)}" if s.to else ""
        click.echo(f"{s.name:20} {s.type:8} {s.url}{to}")


def _test_sink(
    ctx: click.Context, name: str, server: str | None, token: str | None, as_json: bool
) -> None:
    outcome = manage_notify(ctx, server, token, lambda admin: admin.test_sink(name))
    if as_json:
        echo_struct(outcome)
    elif outcome.delivered:
        click.echo(f"Sent a test notification to {name} (job {outcome.job_id}).")
    else:
        click.echo(f"The test notification to {name} failed: {outcome.error}", err=True)
    if not outcome.delivered:
        sys.exit(1)


@sink.command("test")
@click.argument("name")
@remote_options
@_json
@click.pass_context
def sink_test(
    ctx: click.Context, name: str, server: str | None, token: str | None, as_json: bool
) -> None:
    """Send a sample notification to a sink now; exit 1 if it did not go through."""
    _test_sink(ctx, name, server, token, as_json)


@sink.command("delete")
@click.argument("name")
@remote_options
@_json
@click.pass_context
def sink_delete(
    ctx: click.Context, name: str, server: str | None, token: str | None, as_json: bool
) -> None:
    """Delete a sink and its routes (triggers naming it notify nobody there any more)."""
    view = manage_notify(ctx, server, token, lambda admin: admin.delete_sink(name))
    if as_json:
        echo_struct(view)
    else:
        click.echo(f"Deleted sink {view.name}.")


# --- notify: test and global routes ------------------------------------------------------


@click.group()
def notify() -> None:
    """Test sinks and route results to them by cluster, app and status."""


@notify.command("test")
@click.argument("sink_name", metavar="SINK")
@remote_options
@_json
@click.pass_context
def notify_test(
    ctx: click.Context, sink_name: str, server: str | None, token: str | None, as_json: bool
) -> None:
    """Send a sample notification to SINK now; exit 1 if it did not go through."""
    _test_sink(ctx, sink_name, server, token, as_json)


@notify.group("route")
def route() -> None:
    """Global routes: results of matching clusters/apps/statuses go to a sink."""


@route.command("add")
@click.option("--sink", "sink_name", required=True, help="The sink to send to.")
@click.option("--cluster", default="*", show_default=True, help="Cluster name or glob.")
@click.option("--app", default="*", show_default=True, help="Application name or glob.")
@click.option(
    "--status",
    "statuses",
    help="Only these statuses, comma-separated (failed,rejected,expired,pending_approval,...).",
)
@remote_options
@_json
@click.pass_context
def route_add(
    ctx: click.Context,
    sink_name: str,
    cluster: str,
    app: str,
    statuses: str | None,
    server: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Send results matching cluster, app and status to a sink, whatever their trigger."""
    request = convert(
        {
            "sink": sink_name,
            "cluster": cluster,
            "app": app,
            "statuses": [s.strip() for s in (statuses or "").split(",") if s.strip()],
        },
        RouteCreate,
    )
    view = manage_notify(ctx, server, token, lambda admin: admin.add_route(request))
    if as_json:
        echo_struct(view)
    else:
        which = ",".join(view.statuses) or "every status"
        click.echo(f"Route {view.id}: {view.cluster}/{view.app} ({which}) -> {view.sink}")


@route.command("list")
@remote_options
@_json
@click.pass_context
def route_list(ctx: click.Context, server: str | None, token: str | None, as_json: bool) -> None:
    """List the global routes."""
    page = manage_notify(ctx, server, token, lambda admin: admin.list_routes())
    if as_json:
        echo_struct(page.routes)
        return
    if not page.routes:
        click.echo("No routes. Add one with: triggers notify route add --sink S --status failed")
    for r in page.routes:
        click.echo(f"{r.id:<5} {r.cluster}/{r.app:20} {','.join(r.statuses) or '*':30} -> {r.sink}")


@route.command("delete")
@click.argument("route_id", type=int)
@remote_options
@click.pass_context
def route_delete(ctx: click.Context, route_id: int, server: str | None, token: str | None) -> None:
    """Delete a global route."""
    manage_notify(ctx, server, token, lambda admin: admin.delete_route(route_id))
    click.echo(f"Deleted route {route_id}.")


# --- approvals --------------------------------------------------------------------------


def _identity() -> str:
    """Who approves from this terminal, unless --as says."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


_as = click.option(
    "--as",
    "approver",
    default=None,
    help="The approver recorded (default: user@host here; 'admin-api' is not a person).",
)


def _echo_approval(view: ApprovalView, as_json: bool, headline: str) -> None:
    if as_json:
        echo_struct(view)
        return
    click.echo(headline)
    target = "/".join(p for p in (view.cluster, view.app, view.service) if p)
    click.echo(
        f"  {view.action} of {target}: {view.state}, approvals {len(view.approvers)}/{view.required}"
    )
    if view.approvers:
        click.echo(f"  approved by {', '.join(view.approvers)}")
    if view.reason:
        click.echo(f"  reason: {view.reason}")


@click.command()
@click.argument("job_id")
@_as
@remote_options
@_json
@click.pass_context
def approve(
    ctx: click.Context,
    job_id: str,
    approver: str | None,
    server: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Approve a call held for approval; the last approval needed runs it."""
    who = approver or _identity()
    view = manage_notify(
        ctx, server, token, lambda admin: admin.approve(job_id, who), needs_broker=True
    )
    done = view.state == "approved"
    headline = (
        f"Approved job {view.job_id}: the command is published."
        if done
        else f"Approval recorded for job {view.job_id}; "
        f"{view.required - len(view.approvers)} more needed."
    )
    _echo_approval(view, as_json, headline)


@click.command()
@click.argument("job_id")
@click.option("--reason", required=True, help="Why: shown to the caller and in notifications.")
@_as
@remote_options
@_json
@click.pass_context
def reject(
    ctx: click.Context,
    job_id: str,
    reason: str,
    approver: str | None,
    server: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Reject a call held for approval: it never runs; its result is `rejected`."""
    who = approver or _identity()
    view = manage_notify(
        ctx, server, token, lambda admin: admin.reject(job_id, who, reason), needs_broker=True
    )
    _echo_approval(view, as_json, f"Rejected job {view.job_id}.")


@click.command()
@click.option(
    "--state",
    type=click.Choice(["pending", "approved", "rejected", "expired", "all"]),
    default="pending",
    show_default=True,
    help="Only approvals in this state.",
)
@remote_options
@json_array
@click.pass_context
def approvals(
    ctx: click.Context, state: str, server: str | None, token: str | None, as_json: bool
) -> None:
    """Calls held for approval, newest first."""
    chosen: Any = None if state == "all" else state
    page = manage_notify(ctx, server, token, lambda admin: admin.list_approvals(chosen))
    if as_json:
        echo_struct(page.approvals)
        return
    if not page.approvals:
        click.echo(f"No {state if state != 'all' else ''} approvals.".replace("  ", " "))
    for a in page.approvals:
        target = "/".join(p for p in (a.cluster, a.app, a.service) if p)
        click.echo(
            f"{a.job_id[:12]}  {a.state:9} {a.action:8} {target:30} "
            f"{len(a.approvers)}/{a.required}  expires {a.expires_at:%Y-%m-%d %H:%M}"
        )
