"""The `triggers` command line: the `main` group and where each command lives.

A command's module is imported when the command runs (or for ``--help``), so `triggers
list` does not load the gateway and `triggers worker` does not load the CLI's tables.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from shared.errors import BrokerUnavailable, ConfigError, StoreUnavailable
from shared.logging import configure_logging
from shared.settings import Settings

__all__ = ["main"]

# Each command, by the module that defines it (a click command or group of that name).
COMMANDS = {
    "gateway": "triggers.processes:gateway",
    "worker": "triggers.processes:worker",
    "recorder": "triggers.processes:recorder",
    "notifier": "triggers.processes:notifier",
    "dev": "triggers.processes:dev",
    "create": "triggers.manage:create",
    "list": "triggers.manage:list_",
    "show": "triggers.manage:show",
    "update": "triggers.manage:update",
    "rotate": "triggers.manage:rotate",
    "revoke": "triggers.manage:revoke",
    "audit": "triggers.manage:audit",
    "history": "triggers.history:history",
    "job": "triggers.history:job",
    "tail": "triggers.tail:tail",
    "dlq": "triggers.dlq:dlq",
    "sink": "triggers.notifications:sink",
    "notify": "triggers.notifications:notify",
    "approve": "triggers.notifications:approve",
    "reject": "triggers.notifications:reject",
    "approvals": "triggers.notifications:approvals",
    "bench": "triggers.tools:bench",
    "local": "triggers.tools:local",
}


class _Commands(click.Group):
    """The command group: each command loaded from its module when asked for (`COMMANDS`);
    a condition an operator can cause ends in one line, not a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command's name, sorted (as click lists them)."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command of that name, its module imported now; None when there is none."""
        if cmd_name not in COMMANDS:
            return None
        module, _, name = COMMANDS[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)  # noqa: S101 - COMMANDS names commands only
        return command

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a bad setting or an unreachable store or broker is one line, exit 1."""
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
