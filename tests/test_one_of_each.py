"""One of each: defaults, the JSON encoder, `Direction`, stop signals and the error root."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.errors import TriggersError
from shared.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "workers", "shared", "triggers")


@functools.cache
def _modules() -> dict[str, ast.Module]:
    """The syntax tree of every module of the program, by path from the repository root."""
    return {
        path.relative_to(ROOT).as_posix(): ast.parse(path.read_text(encoding="utf-8"))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _where(test: Callable[[ast.AST], bool]) -> list[str]:
    """`path:line` of every node for which `test(node)` holds."""
    return [
        f"{path}:{getattr(node, 'lineno', 0)}"
        for path, tree in _modules().items()
        for node in ast.walk(tree)
        if test(node)
    ]


def _calls(node: ast.AST, method: str) -> bool:
    """Whether `node` calls something's `method` (``x.method(...)``)."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
    )


def test_no_setting_default_is_repeated_as_a_literal() -> None:
    """A keyword named like a setting takes its default from `Settings`, not a number."""
    # Those with a plain default (a factory's, such as the log format's, may differ).
    fields = {f.name for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING}

    def repeats(function: ast.AST) -> bool:
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            return False
        node = function.args
        named = [*node.posonlyargs, *node.args][-len(node.defaults) or len(node.args) :]
        pairs = [
            *zip(named if node.defaults else [], node.defaults, strict=False),
            *zip(node.kwonlyargs, node.kw_defaults, strict=True),
        ]
        return any(
            arg.arg in fields
            and isinstance(default, ast.Constant | ast.Tuple)
            and default is not None
            and not (isinstance(default, ast.Constant) and default.value is None)
            for arg, default in pairs
        )

    assert _where(repeats) == []


def test_one_json_encoder() -> None:
    """msgspec's JSON encoder is built in shared/encoding.py (and the log renderer's) only."""

    found = {where.split(":")[0] for where in _where(lambda node: _calls(node, "Encoder"))}
    assert found == {"shared/encoding.py", "shared/logging.py"}


def test_direction_is_defined_once() -> None:
    """`Direction` is assigned in shared/messages.py only."""

    def defines(node: ast.AST) -> bool:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            return False
        return any(isinstance(t, ast.Name) and t.id == "Direction" for t in targets)

    assert [w.split(":")[0] for w in _where(defines)] == ["shared/messages.py"]


def test_stop_signals_are_handled_in_one_place() -> None:
    """Only shared/signals.py installs SIGTERM/SIGINT handlers on the event loop."""

    found = _where(lambda node: _calls(node, "add_signal_handler"))
    assert [where.split(":")[0] for where in found] == ["shared/signals.py"]


def test_every_public_error_has_the_one_root() -> None:
    """Each exception class the program defines (not private) derives from TriggersError."""
    strays = []
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            module = importlib.import_module(info.name)
            for name, value in inspect.getmembers(module, inspect.isclass):
                if (
                    issubclass(value, BaseException)
                    and value.__module__ == info.name
                    and not name.startswith("_")
                    and not issubclass(value, TriggersError)
                ):
                    strays.append(f"{info.name}.{name}")
    assert strays == []
