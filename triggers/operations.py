"""One management operation, on this machine's database or through a gateway's admin API.

Without ``--server`` the operations work on the store; with it, through the admin API. Either way the API's refusals become the
CLI's: the operator's input is a usage error (exit 2), anything else one line (exit 1).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import click

from shared.admin import AdminError, StoreAdmin, TriggerAdmin
from shared.loop import run
from shared.store import open_store
from triggers.options import settings_of
from triggers.remote import HttpAdmin

__all__ = ["AdminLike", "manage", "remote", "run_operation"]

T = TypeVar("T")


class AdminLike(Protocol):
    """What an operation runs on: a local or remote admin that must be closed."""

    async def close(self) -> None: ...


A = TypeVar("A", bound=AdminLike)


def _refused(exc: AdminError) -> click.ClickException:
    """The operator's input is a usage error (exit 2), wherever it was found; else exit 1."""
    if exc.status in (400, 422):
        return click.UsageError(exc.detail)
    hint = " (set TRIGGERS_ADMIN_TOKEN or pass --token)" if exc.status == 401 else ""
    return click.ClickException(f"{exc.detail}{hint}")


def run_operation(
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

    return run_operation(open_admin, operation)


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

    return run_operation(open_admin, operation)
