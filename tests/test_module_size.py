"""Module size: no module of the program grows past 600 lines (split it by concern)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "workers", "shared", "triggers")
LIMIT = 600


def test_modules_stay_under_the_limit() -> None:
    """Every module in gateway/, workers/, shared/ and triggers/ has at most 600 lines."""
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert len(sizes) > 100, f"found only {len(sizes)} modules under {PACKAGES}"
    over = {path: lines for path, lines in sizes.items() if lines > LIMIT}
    assert not over, f"modules over {LIMIT} lines (split them by concern): {over}"
