"""Inline SVG charts drawn in Python: line charts, scatter plots and histograms.

The HTML report embeds the returned markup directly, so it needs no script, font or style
sheet from elsewhere. Every piece of text (titles, axis labels, legend entries) passes through
``markupsafe.escape``, so a label taken from a file name cannot inject markup into the page.
Non-finite values are left out of a chart, and the chart's caption counts them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from markupsafe import Markup, escape

WIDTH = 520
HEIGHT = 320
MARGIN_LEFT = 62
MARGIN_RIGHT = 16
MARGIN_TOP = 34
MARGIN_BOTTOM = 48
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


@dataclass(frozen=True)
class Series:
    """One named set of points; ``x`` and ``y`` have equal length."""

    label: str
    x: Sequence[float | None]
    y: Sequence[float | None]


@dataclass(frozen=True)
class _Axis:
    low: float
    high: float
    log: bool
    start: float
    end: float

    def position(self, value: float) -> float:
        low, high, value = self.low, self.high, value
        if self.log:
            low, high, value = math.log10(low), math.log10(high), math.log10(value)
        fraction = 0.0 if high == low else (value - low) / (high - low)
        return self.start + fraction * (self.end - self.start)

    def ticks(self) -> list[float]:
        if self.log:
            first, last = math.floor(math.log10(self.low)), math.ceil(math.log10(self.high))
            return [10.0**power for power in range(first, last + 1) if self.low <= 10.0**power <= self.high]
        return _nice_ticks(self.low, self.high)


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw_step = (high - low) / count
    magnitude = 10.0 ** math.floor(math.log10(raw_step))
    step = next(multiple * magnitude for multiple in (1, 2, 2.5, 5, 10) if multiple * magnitude >= raw_step)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def _format_tick(value: float) -> str:
    return f"{value:.3g}"


def _finite_pairs(series: Series, log_x: bool, log_y: bool) -> tuple[np.ndarray, np.ndarray, int]:
    x = np.array([math.nan if v is None else float(v) for v in series.x], dtype=np.float64)
    y = np.array([math.nan if v is None else float(v) for v in series.y], dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if log_x:
        keep &= x > 0
    if log_y:
        keep &= y > 0
    return x[keep], y[keep], int(keep.size - keep.sum())


def _axis_range(values: list[np.ndarray], fixed: tuple[float, float] | None, log: bool) -> tuple[float, float]:
    if fixed is not None:
        return fixed
    joined = np.concatenate(values) if values else np.array([])
    if joined.size == 0:
        return (1.0, 10.0) if log else (0.0, 1.0)
    low, high = float(joined.min()), float(joined.max())
    if log:
        return 10.0 ** math.floor(math.log10(low)), 10.0 ** math.ceil(math.log10(high))
    if low == high:
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.05
    return (0.0 if low >= 0 and low - pad < 0 else low - pad), high + pad


def _frame(title: str, x_axis: _Axis, y_axis: _Axis, x_label: str, y_label: str) -> list[str]:
    parts = [
        f'<text class="chart-title" x="{WIDTH / 2:.1f}" y="18" text-anchor="middle">{escape(title)}</text>',
        f'<line class="axis" x1="{x_axis.start:.1f}" y1="{y_axis.start:.1f}" x2="{x_axis.end:.1f}" y2="{y_axis.start:.1f}"/>',
        f'<line class="axis" x1="{x_axis.start:.1f}" y1="{y_axis.start:.1f}" x2="{x_axis.start:.1f}" y2="{y_axis.end:.1f}"/>',
    ]
    for tick in x_axis.ticks():
        position = x_axis.position(tick)
        parts.append(f'<line class="grid" x1="{position:.1f}" y1="{y_axis.start:.1f}" x2="{position:.1f}" y2="{y_axis.end:.1f}"/>')
        parts.append(f'<text class="tick" x="{position:.1f}" y="{y_axis.start + 14:.1f}" text-anchor="middle">{_format_tick(tick)}</text>')
    for tick in y_axis.ticks():
        position = y_axis.position(tick)
        parts.append(f'<line class="grid" x1="{x_axis.start:.1f}" y1="{position:.1f}" x2="{x_axis.end:.1f}" y2="{position:.1f}"/>')
        parts.append(f'<text class="tick" x="{x_axis.start - 6:.1f}" y="{position + 4:.1f}" text-anchor="end">{_format_tick(tick)}</text>')
    parts.append(
        f'<text class="axis-label" x="{(x_axis.start + x_axis.end) / 2:.1f}" y="{HEIGHT - 10}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
    )
    middle = (y_axis.start + y_axis.end) / 2
    parts.append(
        f'<text class="axis-label" x="14" y="{middle:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {middle:.1f})">{escape(y_label)}</text>'
    )
    return parts


def _legend(labels: Sequence[str], x_axis: _Axis, y_axis: _Axis) -> list[str]:
    if len(labels) < 2:
        return []
    parts = []
    for position, label in enumerate(labels):
        top = y_axis.end + 8 + 16 * position
        color = PALETTE[position % len(PALETTE)]
        parts.append(f'<rect x="{x_axis.end - 150:.1f}" y="{top:.1f}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text class="legend" x="{x_axis.end - 135:.1f}" y="{top + 9:.1f}">{escape(label)}</text>')
    return parts


def _svg(title: str, body: list[str], dropped: int) -> Markup:
    caption = f"<figcaption>{dropped} non-finite or out-of-scale value(s) not shown.</figcaption>" if dropped else ""
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}"><title>{escape(title)}</title>{"".join(body)}</svg>'
    )
    return Markup(f'<figure class="chart">{svg}{caption}</figure>')


def _axes(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    *,
    x_range: tuple[float, float] | None,
    y_range: tuple[float, float] | None,
    log_x: bool,
    log_y: bool,
) -> tuple[_Axis, _Axis]:
    x_low, x_high = _axis_range([x for x, _ in pairs], x_range, log_x)
    y_low, y_high = _axis_range([y for _, y in pairs], y_range, log_y)
    x_axis = _Axis(x_low, x_high, log_x, MARGIN_LEFT, WIDTH - MARGIN_RIGHT)
    # SVG's y grows downwards, so the axis starts at the bottom edge of the plot area.
    y_axis = _Axis(y_low, y_high, log_y, HEIGHT - MARGIN_BOTTOM, MARGIN_TOP)
    return x_axis, y_axis


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    log_x: bool = False,
) -> Markup:
    """Return an SVG figure with one polyline and point markers per series, in series order."""
    pairs = []
    dropped = 0
    for item in series:
        x, y, missing = _finite_pairs(item, log_x, False)
        order = np.argsort(x, kind="stable")
        pairs.append((x[order], y[order]))
        dropped += missing
    x_axis, y_axis = _axes(pairs, x_range=None, y_range=y_range, log_x=log_x, log_y=False)

    body = _frame(title, x_axis, y_axis, x_label, y_label)
    for position, (x, y) in enumerate(pairs):
        color = PALETTE[position % len(PALETTE)]
        points = " ".join(f"{x_axis.position(a):.1f},{y_axis.position(b):.1f}" for a, b in zip(x, y))
        if len(x) > 1:
            body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        for a, b in zip(x, y):
            body.append(f'<circle cx="{x_axis.position(a):.1f}" cy="{y_axis.position(b):.1f}" r="3" fill="{color}"/>')
    body += _legend([item.label for item in series], x_axis, y_axis)
    return _svg(title, body, dropped)


def scatter_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    log_y: bool = False,
) -> Markup:
    """Return an SVG figure with one semi-transparent marker per point."""
    pairs = []
    dropped = 0
    for item in series:
        x, y, missing = _finite_pairs(item, log_x, log_y)
        pairs.append((x, y))
        dropped += missing
    x_axis, y_axis = _axes(pairs, x_range=None, y_range=None, log_x=log_x, log_y=log_y)

    body = _frame(title, x_axis, y_axis, x_label, y_label)
    for position, (x, y) in enumerate(pairs):
        color = PALETTE[position % len(PALETTE)]
        for a, b in zip(x, y):
            body.append(
                f'<circle cx="{x_axis.position(a):.1f}" cy="{y_axis.position(b):.1f}" r="3" '
                f'fill="{color}" fill-opacity="0.55"/>'
            )
    body += _legend([item.label for item in series], x_axis, y_axis)
    return _svg(title, body, dropped)


def histogram_chart(
    samples: Sequence[tuple[str, Sequence[float | None]]],
    *,
    title: str,
    x_label: str,
    bins: int | None = None,
) -> Markup:
    """Return an SVG figure with a step histogram (counts per bin) of each named sample.

    All samples share one set of equal-width bins over the range of their finite values. By
    default the number of bins is the square root of the largest sample size, clipped to [5, 40].
    """
    arrays = []
    dropped = 0
    for _, values in samples:
        array = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
        finite = array[np.isfinite(array)]
        dropped += int(array.size - finite.size)
        arrays.append(finite)
    joined = np.concatenate(arrays) if arrays else np.array([])
    if joined.size:
        low, high = float(joined.min()), float(joined.max())
        if low == high:
            low, high = low - 0.5, high + 0.5
    else:
        low, high = 0.0, 1.0
    if bins is None:
        largest = max((array.size for array in arrays), default=0)
        bins = min(40, max(5, math.ceil(math.sqrt(largest))))
    edges = np.linspace(low, high, bins + 1)
    counts = [np.histogram(array, bins=edges)[0] for array in arrays]
    top = max((int(c.max()) for c in counts if c.size), default=1) or 1

    x_axis = _Axis(low, high, False, MARGIN_LEFT, WIDTH - MARGIN_RIGHT)
    y_axis = _Axis(0.0, top * 1.05, False, HEIGHT - MARGIN_BOTTOM, MARGIN_TOP)
    body = _frame(title, x_axis, y_axis, x_label, "samples")
    for position, count in enumerate(counts):
        color = PALETTE[position % len(PALETTE)]
        points = [f"{x_axis.position(edges[0]):.1f},{y_axis.position(0.0):.1f}"]
        for left, right, value in zip(edges[:-1], edges[1:], count):
            height = y_axis.position(float(value))
            points.append(f"{x_axis.position(left):.1f},{height:.1f}")
            points.append(f"{x_axis.position(right):.1f},{height:.1f}")
        points.append(f"{x_axis.position(edges[-1]):.1f},{y_axis.position(0.0):.1f}")
        body.append(
            f'<polyline fill="{color}" fill-opacity="0.25" stroke="{color}" stroke-width="1.5" '
            f'points="{" ".join(points)}"/>'
        )
    body += _legend([label for label, _ in samples], x_axis, y_axis)
    return _svg(title, body, dropped)
