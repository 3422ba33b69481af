"""The README and docs/: the README stays short and maps every page; each page reads on its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))


def test_readme_is_short_and_links_every_page() -> None:
    """README.md is at most about 300 lines and links each docs/ page."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in PAGES:
        assert f"(docs/{page.name})" in readme, page.name


def test_every_page_opens_with_a_title_and_an_intro() -> None:
    """Each docs/ page starts with a title and a line of prose, not a table, list or code."""
    for page in PAGES:
        lines = [line for line in page.read_text().splitlines() if line.strip()]
        assert lines[0].startswith("# "), page.name
        assert re.match(r"[A-Za-z*`]", lines[1]), page.name
        assert not lines[1].startswith("- "), page.name


def test_no_page_points_above_another_page() -> None:
    """No "see above" that pointed into the README before the pages were split out."""
    for page in PAGES:
        assert not re.search(r"\bsee above\b", page.read_text(), re.IGNORECASE), page.name
