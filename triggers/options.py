"""What the `triggers` commands share: the settings, option blocks, parameter types, output."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click
import msgspec

from shared.describe import duration_text
from shared.jobs import parse_duration, parse_since
from shared.settings import Settings
from shared.triggers import validate_name, validate_namespace
from triggers.render import console

__all__ = [
    "CLEAR",
    "Duration",
    "Limit",
    "check_names",
    "convert",
    "echo_json",
    "echo_struct",
    "json_array",
    "json_object",
    "json_option",
    "metrics_host",
    "metrics_port",
    "only_action",
    "only_app",
    "only_cluster",
    "only_service",
    "remote_options",
    "settings_of",
    "since",
    "wide",
    "width",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# What an option of `update` takes to remove a limit (--max-replicas none).
CLEAR = "none"


def settings_of(ctx: click.Context) -> Settings:
    """The settings `main` read for this command."""
    settings = ctx.obj
    assert isinstance(settings, Settings)  # noqa: S101 - set by main() for every command
    return settings


def echo_json(data: object) -> None:
    """Plain data (dicts, lists) as one line of JSON."""
    click.echo(json.dumps(data, indent=None, sort_keys=False))


def echo_struct(data: object) -> None:
    """A view (or a list of views) as one line of JSON, as the admin API answers it."""
    click.echo(msgspec.json.encode(data).decode())


def json_option(help_text: str) -> Callable[[F], F]:
    """``--json``: machine-readable output instead of text."""
    return click.option("--json", "as_json", is_flag=True, help=help_text)


json_object = json_option("Print one JSON object.")
json_array = json_option("Print a JSON array.")

wide = click.option(
    "--wide", is_flag=True, help="Every column, however wide (default: fit the terminal)."
)


def width(wide: bool) -> int | None:
    """The width to fit tables to: the terminal's (or $COLUMNS), None with --wide."""
    return None if wide else console().width


# The filters of the listing commands, each declared once.
only_cluster = click.option("--cluster", help="Only this cluster.")
only_app = click.option("--app", help="Only this application.")
only_service = click.option("--service", help="Only this service.")
only_action = click.option(
    "--action", type=click.Choice(["redeploy", "scale"]), help="Only this action."
)

metrics_port = click.option(
    "--metrics-port", type=click.IntRange(1, 65535), help="Serve Prometheus /metrics on this port."
)
metrics_host = click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="Address of /metrics."
)


def remote_options(fn: F) -> F:
    """``--server`` and ``--token``: work through a gateway's admin API."""
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


def since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """``--since``: a duration ago (15m, 2h, 7d) or a time (ISO 8601)."""
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class Limit(click.ParamType[Any]):
    """A whole number within bounds, or "none" to remove the limit (update)."""

    name = "N|none"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The number, or `CLEAR`."""
        if isinstance(value, int) or value is None:
            return value
        if str(value).lower() in (CLEAR, "off"):
            return CLEAR
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number (or 'none')", param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{number} is not in {self.low}..{self.high}", param, ctx)
        return number


class Duration(Limit):
    """Seconds, or a duration with a unit (90s, 2m, 12h, 30d, 2w); "none" clears it (update)."""

    name = "DURATION"

    def __init__(
        self, low: int = 0, high: int = 10 * 365 * 86400, *, clearable: bool = True
    ) -> None:
        super().__init__(low, high)
        self.clearable = clearable

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Whole seconds, or `CLEAR`."""
        if isinstance(value, int) or value is None:
            return value
        if self.clearable and str(value).lower() in (CLEAR, "off"):
            return CLEAR
        try:
            seconds = round(parse_duration(str(value)).total_seconds())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not self.low <= seconds <= self.high:
            low, high = duration_text(self.low), duration_text(self.high)
            self.fail(f"{value} is not within {low}..{high}", param, ctx)
        return seconds


def check_names(**names: str | None) -> None:
    """A usage error naming the first cluster/app/service/namespace that cannot exist."""
    try:
        for kind, value in names.items():
            if value is not None and kind == "namespace":
                validate_namespace(value)
            elif value is not None:
                validate_name(kind, value)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def convert(data: dict[str, Any], kind: type[T]) -> T:
    """The options given as a request body; a field that does not validate names its flag."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        # "... - at `$.min_replicas`" names the flag: "... - at `--min-replicas`".
        message = re.sub(
            r"`\$\.([a-z_]+)`", lambda m: f"`--{m.group(1).replace('_', '-')}`", str(exc)
        )
        raise click.UsageError(message) from None
