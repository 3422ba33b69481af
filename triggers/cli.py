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

# Each command: the module that defines it (a click command or group of that name), and
# the first line of its help, so `triggers --help` lists them without importing any
# (tests/test_cli_help.py keeps the two the same).
COMMANDS: dict[str, tuple[str, str]] = {
    "gateway": (
        "triggers.processes:gateway",
        "Serve /hook/trigger: authenticate calls and publish commands.",
    ),
    "worker": (
        "triggers.processes:worker",
        "Consume commands, apply them to the orchestrator, publish results.",
    ),
    "recorder": (
        "triggers.processes:recorder",
        "Record every job's progress and result in the store (for history, status and --since).",
    ),
    "notifier": (
        "triggers.processes:notifier",
        "Deliver results to sinks (webhook, Slack, Teams, e-mail); expire unapproved calls.",
    ),
    "dev": (
        "triggers.processes:dev",
        "Everything in one process on a seeded local cluster, for a first try.",
    ),
    "create": (
        "triggers.manage:create",
        "Create a trigger and print its URL. The secret is shown only now.",
    ),
    "list": ("triggers.manage:list_", "List triggers (secrets are never shown again)."),
    "show": ("triggers.manage:show", "Show one trigger and its policy."),
    "update": (
        "triggers.manage:update",
        'Change a trigger\'s policy and alert options; "none" removes a limit (--max-replicas none).',
    ),
    "rotate": (
        "triggers.manage:rotate",
        "Give a trigger a new secret; print the new URL (shown only now).",
    ),
    "revoke": (
        "triggers.manage:revoke",
        "Revoke a trigger: calls answer 403 within a few seconds.",
    ),
    "audit": (
        "triggers.manage:audit",
        "The trigger calls, newest first: outcome, reason, caller (never the secret).",
    ),
    "history": (
        "triggers.history:history",
        "Jobs the recorder kept, newest first (from the store, or a gateway with --server).",
    ),
    "job": (
        "triggers.history:job",
        "Show one job, as GET /v1/jobs/ID does; a unique prefix of its id is enough.",
    ),
    "tail": ("triggers.tail:tail", "Print result events as workers publish them."),
    "dlq": ("triggers.dlq:dlq", "Inspect, replay or purge dead-lettered commands."),
    "sink": (
        "triggers.notifications:sink",
        "Where notifications go: signed webhooks, Slack, Teams, e-mail.",
    ),
    "notify": (
        "triggers.notifications:notify",
        "Test sinks and route results to them by cluster, app and status.",
    ),
    "approve": (
        "triggers.notifications:approve",
        "Approve a call held for approval; the last approval needed runs it.",
    ),
    "reject": (
        "triggers.notifications:reject",
        "Reject a call held for approval: it never runs; its result is `rejected`.",
    ),
    "approvals": ("triggers.notifications:approvals", "Calls held for approval, newest first."),
    "bench": (
        "triggers.tools:bench",
        "Measure the gateway and the pipeline against the ceilings and peers, in one run.",
    ),
    "local": ("triggers.tools:local", "Seed and inspect the local simulated cluster."),
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
        module, _, name = COMMANDS[cmd_name][0].partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)  # noqa: S101 - COMMANDS names commands only
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, from `COMMANDS` (as click would write it)."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        # A stand-in command per line shortens the help exactly as the real one would.
        rows = [
            (name, click.Command(name, help=about).get_short_help_str(limit))
            for name, (_, about) in COMMANDS.items()
        ]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))

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
