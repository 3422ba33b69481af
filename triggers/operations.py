"""One management operation, on this machine's database or through a gateway's admin API.

Without ``--server`` the operations work on the store (and the broker, to publish an
approved call); with it, through the admin API. Either way the API's refusals become the
CLI's: the operator's input is a usage error (exit 2), anything else one line (exit 1).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import click

from shared.admin import AdminError, StoreAdmin, TriggerAdmin
from shared.broker import AmqpBus
from shared.errors import BrokerUnavailable
from shared.jobs import open_job_store
from shared.loop import run
from shared.notify_admin import NotifyAdmin, StoreNotifyAdmin
from shared.notify_store import open_notify_store
from shared.store import open_store
from triggers.options import settings_of
from triggers.remote import HttpAdmin, HttpNotifyAdmin

__all__ = ["manage", "manage_notify", "remote"]

T = TypeVar("T")


class _Admin(Protocol):
    async def close(self) -> None: ...


A = TypeVar("A", bound=_Admin)


def _refused(exc: AdminError) -> click.ClickException:
    """The operator's input is a usage error (exit 2), wherever it was found; else exit 1."""
    if exc.status in (400, 422):
        return click.UsageError(exc.detail)
    hint = " (set TRIGGERS_ADMIN_TOKEN or pass --token)" if exc.status == 401 else ""
    return click.ClickException(f"{exc.detail}{hint}")


def _run_operation(
    open_admin: Callable[[], Awaitable[A]], operation: Callable[[A], Awaitable[T]]
) -> T:
    """Open the admin, run the operation, close the admin; refusals as click errors."""

    async def run_it() -> T:
        admin = await open_admin()
        try:
            return await operation(admin)
        finally:
            await admin.close()

    try:
        return run(run_it())
    except AdminError as exc:
        raise _refused(exc) from None


def remote(server: str, token: str | None, operation: Callable[[HttpAdmin], Awaitable[T]]) -> T:
    """Run one operation through a gateway's admin API (--server)."""

    async def open_admin() -> HttpAdmin:
        return HttpAdmin(server, token)

    return _run_operation(open_admin, operation)


def manage(
    ctx: click.Context,
    server: str | None,
    token: str | None,
    operation: Callable[[TriggerAdmin], Awaitable[T]],
) -> T:
    """Run one trigger operation on the local store, or remotely with --server."""
    settings = settings_of(ctx)  # read (and checked) with --server too
    if server:
        return remote(server, token, operation)

    async def open_admin() -> TriggerAdmin:
        return StoreAdmin(open_store(settings.database), settings.public_url)

    return _run_operation(open_admin, operation)


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
        return _run_operation(open_admin, operation)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
