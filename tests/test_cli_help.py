"""`triggers --help` lists every command from the table in triggers/cli.py without importing
the commands' modules; the table says what each command's own help says."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from triggers.cli import COMMANDS, main

pytestmark = pytest.mark.unit


def test_the_table_says_what_each_command_says() -> None:
    """Each command's line in COMMANDS is the first paragraph of its help, at every width."""
    ctx = click.Context(main)
    for name, (_, about) in COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None, name
        first = " ".join((command.help or "").strip().split("\n\n")[0].split())
        assert about == first, name
        for limit in (20, 45, 80, 120):
            stand_in = click.Command(name, help=about)
            assert stand_in.get_short_help_str(limit) == command.get_short_help_str(limit)


def test_help_imports_no_command_module() -> None:
    """`triggers --help` lists the commands and loads none of their modules."""
    modules = sorted({path.partition(":")[0] for path, _ in COMMANDS.values()})
    script = (
        "import sys\nfrom click.testing import CliRunner\nfrom triggers.cli import main\n"
        "result = CliRunner().invoke(main, ['--help'])\n"
        "print(result.output)\n"
        f"print('loaded:', [m for m in {modules!r} if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert "loaded: []" in out
    for name in COMMANDS:
        assert f"\n  {name} " in out, name
