"""Inline SVG charts: point positions, histogram counts, dropped values and escaping."""

from __future__ import annotations

import math
import re

import pytest

from robusteval.reports.charts import (
    HEIGHT,
    MARGIN_BOTTOM,
    MARGIN_TOP,
    Series,
    histogram_chart,
    line_chart,
    scatter_chart,
)

PLOT_BOTTOM = HEIGHT - MARGIN_BOTTOM
PLOT_HEIGHT = HEIGHT - MARGIN_BOTTOM - MARGIN_TOP


def _circles(svg: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r'<circle cx="([-\d.]+)" cy="([-\d.]+)"', svg)]


def test_line_chart_point_positions() -> None:
    xs = [0.0, 0.25, 1.0]
    ys = [1.0, 0.5, 0.0]
    svg = line_chart([Series("a", xs, ys)], title="t", x_label="x", y_label="y", y_range=(0.0, 1.0))
    points = _circles(svg)

    assert len(points) == 3
    # With a fixed range (0, 1), y = v maps to PLOT_BOTTOM - v * PLOT_HEIGHT (SVG y grows downwards).
    for (_, cy), value in zip(points, ys):
        assert cy == pytest.approx(PLOT_BOTTOM - value * PLOT_HEIGHT, abs=0.06)
    # x positions are affine in x, so relative offsets match to the rounding of 0.1 px.
    (x0, _), (x1, _), (x2, _) = points
    assert (x1 - x0) / (x2 - x0) == pytest.approx(0.25, abs=1e-3)


def test_line_chart_sorts_by_x() -> None:
    svg = line_chart([Series("a", [0.3, 0.1, 0.2], [0.3, 0.1, 0.2])], title="t", x_label="x", y_label="y")
    xs = [x for x, _ in _circles(svg)]

    assert xs == sorted(xs)


def test_histogram_counts_by_hand() -> None:
    # Two bins over [0, 2]: [0, 1) holds 0, 0, 0.5 and [1, 2] holds 1, 1.5, 2, 2.
    svg = histogram_chart([("v", [0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0])], title="t", x_label="x", bins=2)
    points = re.search(r'<polyline fill="[^"]+" fill-opacity="0.25"[^>]* points="([^"]+)"', svg)

    assert points is not None
    heights = [float(pair.split(",")[1]) for pair in points.group(1).split()]
    top_count = 4 * 1.05  # the y axis runs to 1.05 times the largest count
    counts = [(PLOT_BOTTOM - y) / PLOT_HEIGHT * top_count for y in heights[1:-1:2]]
    assert counts == pytest.approx([3.0, 4.0], abs=0.01)


def test_non_finite_values_are_counted() -> None:
    svg = scatter_chart(
        [Series("", [1.0, math.inf, None, 2.0], [1.0, 1.0, 1.0, math.nan])], title="t", x_label="x", y_label="y"
    )

    assert len(_circles(svg)) == 1
    assert "3 non-finite or out-of-scale value(s) not shown." in svg


def test_log_axis_drops_non_positive() -> None:
    svg = scatter_chart([Series("", [0.0, 0.1, 10.0], [1.0, 1.0, 1.0])], title="t", x_label="x", y_label="y", log_x=True)
    (x_low, _), (x_high, _) = _circles(svg)

    assert "1 non-finite or out-of-scale value(s) not shown." in svg
    # 0.1 and 10 are the ends of the decade range [0.1, 10].
    assert x_high > x_low


def test_chart_text_is_escaped() -> None:
    label = "</text><script>alert(1)</script>"
    svg = line_chart([Series(label, [0, 1], [0, 1]), Series("b&c", [0, 1], [1, 0])],
                     title=label, x_label=label, y_label="y")

    assert "<script" not in svg
    assert svg.count("&lt;/text&gt;&lt;script&gt;alert(1)&lt;/script&gt;") == 4  # title, <title>, x label, legend
    assert "b&amp;c" in svg


def test_empty_series_render() -> None:
    svg = histogram_chart([("v", [])], title="t", x_label="x")

    assert svg.startswith('<figure class="chart"><svg')
    assert "<polyline" in svg
