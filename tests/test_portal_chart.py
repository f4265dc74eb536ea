"""The portal's SVG chart: bars in proportion, failures over attempts, named for screen readers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import pytest

from api.portal.chart import Bucket, bars_svg

T0 = datetime(2026, 12, 2, 0, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def rects(svg: str) -> list[tuple[str, float]]:
    """Each bar as (its class, its height)."""
    root = ElementTree.fromstring(svg)
    return [(r.get("class", ""), float(r.get("height", "0"))) for r in root.iter(f"{SVG}rect")]


def hours(*counts: tuple[int, int]) -> list[Bucket]:
    return [Bucket(T0 + timedelta(hours=n), a, f) for n, (a, f) in enumerate(counts)]


@pytest.mark.parametrize(
    ("buckets", "bars", "description"),
    [
        ([], [], "no data"),
        (hours((0, 0), (0, 0)), [], "0 attempts, 0 failed, in 2 bars"),
        (hours((10, 0)), [("attempts", 150.0)], "10 attempts, 0 failed, in 1 bars"),
        (
            hours((10, 10)),
            [("attempts", 150.0), ("failures", 150.0)],
            "10 attempts, 10 failed, in 1 bars",
        ),
        (
            hours((10, 5), (5, 0)),
            [("attempts", 150.0), ("failures", 75.0), ("attempts", 75.0)],
            "15 attempts, 5 failed, in 2 bars",
        ),
        # A tiny count still shows: at least one unit high.
        (
            hours((1000, 1)),
            [("attempts", 150.0), ("failures", 1.0)],
            "1000 attempts, 1 failed, in 1 bars",
        ),
    ],
)
def test_bars_are_in_proportion_to_the_peak(
    buckets: list[Bucket], bars: list[tuple[str, float]], description: str
) -> None:
    svg = bars_svg(buckets, title="Attempts, 24 h", chart_id="c")
    assert rects(svg) == bars
    root = ElementTree.fromstring(svg)
    assert root.get("role") == "img"
    assert root.get("aria-labelledby") == "c-title c-desc"
    assert root.find(f"{SVG}desc").text == description  # type: ignore[union-attr]


def test_the_axes_name_the_peak_the_start_and_now() -> None:
    svg = bars_svg(hours((3, 1), (7, 0), (2, 2)), title="t", chart_id="c")
    texts = [t.text for t in ElementTree.fromstring(svg).iter(f"{SVG}text")]
    assert texts == ["7", "0", "02 Dec 00:00 UTC", "now"]


def test_the_title_is_escaped() -> None:
    svg = bars_svg([], title='<script>alert("x")</script>', chart_id="c")
    assert "<script>" not in svg
    assert re.search(r"<title id=\"c-title\">&lt;script&gt;", svg)
