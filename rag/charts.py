"""Geometry of the app's small inline SVG charts: bars and lines with a y-axis of round ticks,
x labels thinned so that they never overlap or run off the edge, and a hover title per point.

Plain data in, plain data out (the templates draw it): a chart library would mean a vendored
JavaScript bundle for three charts whose hover text a <title> element already gives. Every
chart has a fixed viewBox and scales to its container (CSS `svg.chart { width: 100% }`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

WIDTH = 600
HEIGHT = 190
MARGIN_LEFT = 48  # room for the y-axis labels
MARGIN_RIGHT = 24  # half an x label: the last one stays inside the box
MARGIN_TOP = 10
MARGIN_BOTTOM = 30
X_LABEL_SLOT = 56  # the width an x label ("30 Nov", "retriever-v12") may take, in viewBox units


@dataclass(frozen=True)
class Tick:
    value: float
    y: float
    text: str


@dataclass(frozen=True)
class XLabel:
    x: float
    text: str
    anchor: str  # SVG text-anchor


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    value: float
    title: str


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    value: float
    title: str
    marked: bool = False
    css_class: str = ""


@dataclass
class Chart:
    width: int
    height: int
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    ticks: list[Tick]
    x_labels: list[XLabel]
    bars: list[Bar] = field(default_factory=list)
    dots: list[Dot] = field(default_factory=list)
    line: str = ""  # polyline points

    @property
    def marked(self) -> Dot | None:
        return next((dot for dot in self.dots if dot.marked), None)


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick values from at or below `low` to at or above `high` (1, 2, 2.5 or 5 times a
    power of ten apart)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("ticks need finite bounds")
    if high < low:
        low, high = high, low
    if high == low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw - 1e-12)
    start = math.floor(low / step + 1e-9) * step
    ticks = []
    value = start
    while value < high - 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    ticks.append(round(value, 10))
    return ticks


def tick_text(value: float, step: float) -> str:
    if step >= 1 and float(value).is_integer():
        return f"{int(value)}"
    exponent = math.floor(math.log10(step) + 1e-9)
    mantissa = round(step / 10**exponent, 6)  # the step is a difference of two ticks: 0.0500000001
    decimals = max(0, min(6, -exponent + (0 if mantissa in (1, 2, 5, 10) else 1)))
    return f"{value:.{decimals}f}"


def _frame(width: int, height: int) -> tuple[float, float, float, float]:
    return MARGIN_LEFT, width - MARGIN_RIGHT, MARGIN_TOP, height - MARGIN_BOTTOM


def _y_axis(low: float, high: float, top: float, bottom: float, *, count: int = 4) -> tuple[list[Tick], float, float]:
    values = nice_ticks(low, high, count)
    lowest, highest = values[0], values[-1]
    step = values[1] - values[0] if len(values) > 1 else 1.0
    span = (highest - lowest) or 1.0

    def y(value: float) -> float:
        return round(bottom - (bottom - top) * (value - lowest) / span, 1)

    return [Tick(value=v, y=y(v), text=tick_text(v, step)) for v in values], lowest, span


def _x_labels(centres: list[float], texts: list[str], width: int) -> list[XLabel]:
    """Every k-th label, k chosen so labels are at least a slot apart; the last point always
    gets its label (anchored at its end so it cannot run past the box)."""
    n = len(centres)
    if not n:
        return []
    # Points are evenly spaced: label every k-th, k the fewest points that span a slot.
    spacing = (centres[-1] - centres[0]) / (n - 1) if n > 1 else X_LABEL_SLOT
    step = max(1, math.ceil(X_LABEL_SLOT / spacing - 1e-9)) if spacing > 0 else n
    chosen = list(range(0, n, step))
    if chosen[-1] != n - 1:
        if centres[n - 1] - centres[chosen[-1]] < X_LABEL_SLOT:
            chosen.pop()
        chosen.append(n - 1)
    labels = []
    for i in chosen:
        x = centres[i]
        anchor = "end" if x + X_LABEL_SLOT / 2 > width else "start" if x - X_LABEL_SLOT / 2 < 0 else "middle"
        labels.append(XLabel(x=round(x, 1), text=texts[i], anchor=anchor))
    return labels


def bar_chart(values: list[float], *, labels: list[str], titles: list[str], width: int = WIDTH, height: int = HEIGHT) -> Chart:
    """Vertical bars from 0, one per value; `labels` under them (thinned), `titles` on hover."""
    left, right, top, bottom = _frame(width, height)
    ticks, lowest, span = _y_axis(0.0, max([0.0, *values]) or 1.0, top, bottom)
    slot = (right - left) / max(1, len(values))
    bar_width = round(max(1.0, slot * 0.8), 1)
    bars, centres = [], []
    for i, value in enumerate(values):
        x = left + i * slot + (slot - bar_width) / 2
        bar_height = (bottom - top) * (value - lowest) / span
        if value and bar_height < 2:
            bar_height = 2.0  # a day with labels stays visible next to a busy day
        bars.append(Bar(x=round(x, 1), y=round(bottom - bar_height, 1), width=bar_width, height=round(bar_height, 1),
                        value=value, title=titles[i]))  # fmt: skip
        centres.append(x + bar_width / 2)
    return Chart(width=width, height=height, plot_left=left, plot_right=right, plot_top=top, plot_bottom=bottom,
                 ticks=ticks, x_labels=_x_labels(centres, labels, width), bars=bars)  # fmt: skip


def line_chart(
    values: list[float],
    *,
    labels: list[str],
    titles: list[str],
    marked: int | None = None,
    classes: list[str] | None = None,
    floor_zero: bool = False,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Chart:
    """A line through the values, evenly spaced, with a dot per value (its title on hover);
    the dot at index `marked` is drawn apart (the live version)."""
    left, right, top, bottom = _frame(width, height)
    if not values:
        raise ValueError("a line chart needs at least one value")
    low, high = min(values), max(values)
    if floor_zero:
        low = min(0.0, low)
    ticks, lowest, span = _y_axis(low, high, top, bottom)
    inner_left, inner_right = left + 8, right - 4
    last = max(1, len(values) - 1)
    dots, centres = [], []
    for i, value in enumerate(values):
        x = inner_left + (inner_right - inner_left) * i / last if len(values) > 1 else (inner_left + inner_right) / 2
        y = bottom - (bottom - top) * (value - lowest) / span
        dots.append(Dot(x=round(x, 1), y=round(y, 1), value=value, title=titles[i], marked=i == marked,
                        css_class=(classes or [""] * len(values))[i]))  # fmt: skip
        centres.append(x)
    return Chart(width=width, height=height, plot_left=left, plot_right=right, plot_top=top, plot_bottom=bottom,
                 ticks=ticks, x_labels=_x_labels(centres, labels, width), dots=dots,
                 line=" ".join(f"{dot.x},{dot.y}" for dot in dots))  # fmt: skip
