"""A bar chart of attempts and failures over time, drawn as SVG on the server.

Pure: buckets in, markup out, no clock and no I/O. No script and no library:
the page stays readable without JavaScript and nothing is fetched. Each bar is
a bucket's attempts, with its failures drawn over it from the baseline, so the
red share of a bar is its failure share. The chart is an image to assistive
technology (``role="img"``), named by its title and described by its totals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

WIDTH = 640
HEIGHT = 180
LEFT = 44  # room for the y axis' labels
BOTTOM = 22  # room for the x axis' labels
TOP = 8


@dataclass(frozen=True)
class Bucket:
    """The attempts of one span of time, and how many of them failed."""

    start: datetime
    attempts: int
    failures: int


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def bars_svg(buckets: Sequence[Bucket], *, title: str, chart_id: str) -> str:
    """The SVG of ``buckets`` (oldest first), titled ``title``; ids prefixed with ``chart_id``."""
    attempts = sum(b.attempts for b in buckets)
    failures = sum(b.failures for b in buckets)
    description = (
        f"{attempts} attempts, {failures} failed, in {len(buckets)} bars" if buckets else "no data"
    )
    peak = max((b.attempts for b in buckets), default=0)
    top = max(peak, 1)
    plot_w = WIDTH - LEFT - 4
    plot_h = HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(buckets), 1)
    bar = max(slot * 0.8, 1.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-labelledby="{chart_id}-title {chart_id}-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<desc id="{chart_id}-desc">{escape(description)}</desc>',
        # Axes: the baseline and the peak's gridline, each labelled.
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 4}" y2="{TOP + plot_h}"'
        ' stroke="#8c959f"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{WIDTH - 4}" y2="{TOP}" stroke="#d0d7de"'
        ' stroke-dasharray="3 3"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{top}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>',
    ]
    for index, bucket in enumerate(buckets):
        x = LEFT + index * slot + (slot - bar) / 2
        for kind, value in (("attempts", bucket.attempts), ("failures", bucket.failures)):
            if value <= 0:
                continue
            h = max(plot_h * value / top, 1.0)
            parts.append(
                f'<rect class="{kind}" x="{_fmt(x)}" y="{_fmt(TOP + plot_h - h)}"'
                f' width="{_fmt(bar)}" height="{_fmt(h)}"/>'
            )
    if buckets:  # the time the chart starts, and its end: now
        start = buckets[0].start.strftime("%d %b %H:%M UTC")
        parts.append(f'<text x="{LEFT}" y="{HEIGHT - 6}" text-anchor="start">{start}</text>')
        parts.append(f'<text x="{WIDTH - 4}" y="{HEIGHT - 6}" text-anchor="end">now</text>')
    parts.append("</svg>")
    return "".join(parts)
