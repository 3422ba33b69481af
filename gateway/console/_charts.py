"""Charts as inline SVG, drawn on the server: no script, no library, nothing to download.

Each chart is an ``<svg role="img">`` with a title and a one-line description for screen
readers; the page puts the same numbers in a table beside it. Colours come from the
console's stylesheet through classes (``s-<status>``), so they follow its palette.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from markupsafe import Markup, escape

__all__ = ["Buckets", "per_minute", "stacked_bars", "step_line"]

_WIDTH, _HEIGHT = 720, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 40, 10, 10, 28


class Buckets:
    """Counts per minute and per key over a window ending now, oldest minute first."""

    def __init__(self, minutes: list[datetime], counts: dict[str, list[int]]) -> None:
        self.minutes = minutes
        self.counts = counts

    def total(self, key: str) -> int:
        """All of one key over the window."""
        return sum(self.counts.get(key, ()))

    def rows(self) -> list[tuple[datetime, list[int]]]:
        """Per minute, the counts of every key in key order (for the data table)."""
        return [
            (minute, [self.counts[key][i] for key in self.counts])
            for i, minute in enumerate(self.minutes)
        ]


def per_minute(
    items: Iterable[tuple[datetime, str]], keys: Sequence[str], now: datetime, minutes: int = 60
) -> Buckets:
    """Count `(time, key)` items per minute over the last `minutes` minutes."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    counts = {key: [0] * minutes for key in keys}
    for moment, key in items:
        if key in counts and start <= moment < end:
            counts[key][int((moment - start).total_seconds() // 60)] += 1
    return Buckets([start + timedelta(minutes=i) for i in range(minutes)], counts)


def _frame(title: str, description: str, body: list[str]) -> Markup:
    slug = "".join(c if c.isalnum() else "-" for c in title.lower())
    # Safe: every text that is not a number or a constant goes through `escape`.
    return Markup(  # noqa: S704
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-labelledby="{slug}-t {slug}-d" preserveAspectRatio="xMidYMid meet">'
        f'<title id="{slug}-t">{escape(title)}</title>'
        f'<desc id="{slug}-d">{escape(description)}</desc>' + "".join(body) + "</svg>"
    )


def _axis(top: int, labels: list[tuple[float, str]]) -> list[str]:
    """The y axis from 0 to `top` and the x labels at their positions."""
    parts = []
    plot_h = _HEIGHT - _TOP - _BOTTOM
    for value in sorted({0, top // 2, top}):
        y = _TOP + plot_h - plot_h * value / max(top, 1)
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>'
        )
    for x, label in labels:
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{_HEIGHT - 8}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    return parts


def stacked_bars(title: str, buckets: Buckets) -> Markup:
    """A bar per minute, stacked by key (coloured by class ``s-<key>``)."""
    totals = [sum(column) for _, column in buckets.rows()]
    top = max(max(totals, default=0), 1)
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    slot = plot_w / max(len(buckets.minutes), 1)
    body: list[str] = []
    for i, (minute, column) in enumerate(buckets.rows()):
        x = _LEFT + i * slot
        y: float = _TOP + plot_h
        for key, count in zip(buckets.counts, column, strict=True):
            if not count:
                continue
            height = plot_h * count / top
            y -= height
            body.append(
                f'<rect class="bar s-{escape(key)}" x="{x + 1:.1f}" y="{y:.1f}" '
                f'width="{max(slot - 2, 1):.1f}" height="{height:.1f}">'
                f"<title>{minute:%H:%M} UTC: {count} {escape(key)}</title></rect>"
            )
    labels = [
        (_LEFT + i * slot + slot / 2, f"{minute:%H:%M}")
        for i, minute in enumerate(buckets.minutes)
        if i % 10 == 0
    ]
    summary = ", ".join(f"{buckets.total(key)} {key}" for key in buckets.counts)
    description = f"Per minute over the last {len(buckets.minutes)} minutes: {summary}."
    return _frame(title, description, _axis(top, labels) + body)


def step_line(
    title: str, points: Sequence[tuple[datetime, int]], start: datetime, end: datetime
) -> Markup:
    """A value that holds until it changes (replicas), as steps from `start` to `end`."""
    top = max(max((v for _, v in points), default=0), 1)
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    span = max((end - start).total_seconds(), 1.0)

    def x_of(moment: datetime) -> float:
        return _LEFT + plot_w * min(max((moment - start).total_seconds() / span, 0.0), 1.0)

    def y_of(value: int) -> float:
        return _TOP + plot_h - plot_h * value / top

    body: list[str] = []
    if points:
        path = [f"M{x_of(points[0][0]):.1f},{y_of(points[0][1]):.1f}"]
        for moment, value in points[1:]:
            path.append(f"H{x_of(moment):.1f}V{y_of(value):.1f}")
        path.append(f"H{x_of(end):.1f}")
        body.append(f'<path class="line" d="{"".join(path)}"/>')
        body.extend(
            f'<circle class="dot" cx="{x_of(m):.1f}" cy="{y_of(v):.1f}" r="3">'
            f"<title>{m:%Y-%m-%d %H:%M:%S} UTC: {v} replicas</title></circle>"
            for m, v in points
        )
    labels = [(x_of(start), f"{start:%m-%d %H:%M}"), (x_of(end), f"{end:%m-%d %H:%M}")]
    if points:
        description = (
            f"{len(points)} changes; from {points[0][1]} to {points[-1][1]} replicas, "
            f"highest {top}."
        )
    else:
        description = "No results in this window."
    return _frame(title, description, _axis(top, labels) + body)
