"""Server-side chart geometry for the console: pure functions from data to rectangles and axis ticks.

The console has no script (its CSP forbids every one), so a chart is inline SVG laid out here and
drawn by a template with presentation attributes only (``x=``, ``height=``, ``fill=``): no inline
style, nothing to run. Keeping the arithmetic out of the template makes it testable
(tests/unit/test_console_charts.py) and keeps templates to laying things out.

A stacked bar chart has one bar per column (a day of a spend report) and one segment per series
(a team, a project, a model, a person), stacked bottom-up in the series' order. The value axis runs
from zero to a "nice" top (1, 2, 2.5 or 5 times a power of ten, enough steps to cover the largest
bar), so tick labels read as round amounts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

#: Series colours, distinguishable with the common colour-vision deficiencies and at least 3:1
#: against white (WCAG's non-text contrast); the last, grey, is for "everything else".
PALETTE = ("#1f5fa8", "#b35900", "#1a7a4c", "#8e3b8a", "#b3261e", "#00708a", "#6b5a00", "#3d4a5c")
OTHER = "#6f7782"
#: Steps of a nice axis, times a power of ten.
_NICE = (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10))


@dataclass(frozen=True)
class Tick:
    """A value-axis line and its label, ``y`` in SVG coordinates (down is larger)."""

    value: Decimal
    y: float
    label: str


@dataclass(frozen=True)
class Segment:
    """One series' part of a bar."""

    series: str
    value: Decimal
    x: float
    y: float
    width: float
    height: float
    fill: str


@dataclass(frozen=True)
class Bar:
    """One column: its key (a day's ISO date), its axis label (empty when skipped to avoid clutter),
    its total and its segments, bottom first (a zero value has no segment)."""

    key: str
    label: str
    total: Decimal
    x: float
    width: float
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Series:
    label: str
    fill: str


@dataclass(frozen=True)
class StackedChart:
    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    series: tuple[Series, ...]
    maximum: Decimal

    @property
    def label_y(self) -> float:
        """Where the column labels' baseline is, under the plot."""
        return self.bottom + 16


def fills(count: int, *, other: bool = False) -> list[str]:
    """Colours for ``count`` series (the palette repeats past its end); with ``other``, the last is grey."""
    named = count - 1 if other and count else count
    colours = [PALETTE[i % len(PALETTE)] for i in range(named)]
    return [*colours, OTHER] if other and count else colours


def nice_step(maximum: Decimal, steps: int = 4) -> Decimal:
    """The smallest step of 1, 2, 2.5 or 5 times a power of ten with which ``steps`` steps reach
    ``maximum`` (a positive amount)."""
    if maximum <= 0:
        raise ValueError("maximum must be positive")
    raw = maximum / steps
    magnitude = Decimal(1).scaleb(raw.adjusted())
    for factor in _NICE:
        if factor * magnitude >= raw:
            return (factor * magnitude).normalize()
    raise AssertionError("unreachable: ten times the magnitude exceeds raw")


def axis(maximum: Decimal, steps: int = 4) -> list[Decimal]:
    """Tick values from zero to the first multiple of the nice step at or above ``maximum`` (with
    nothing to show, 0 to 1)."""
    if maximum <= 0:
        maximum = Decimal(1)
    step = nice_step(maximum, steps)
    values = [Decimal(0)]
    while values[-1] < maximum:
        values.append(values[-1] + step)
    return values


def money(value: Decimal) -> str:
    """A tick's label: whole dollars when the value is whole, else as many decimals as it needs (2 to 4)."""
    if value == value.to_integral_value():
        return f"${value:,.0f}"
    places = max(2, min(4, -value.normalize().as_tuple().exponent))  # type: ignore[operator]
    return f"${value:,.{places}f}"


def label_every(count: int, most: int) -> int:
    """Label one column in this many so that at most ``most`` labels show (1: every column)."""
    if count <= most:
        return 1
    return -(-count // most)


def stacked(
    columns: Sequence[tuple[str, str]],
    series: Sequence[str],
    values: Mapping[tuple[str, str], Decimal],
    *,
    width: int = 760,
    height: int = 260,
    margin: tuple[float, float, float, float] = (12, 12, 30, 72),
    gap: float = 0.2,
    most_labels: int = 16,
    colours: Sequence[str] | None = None,
    label: Callable[[Decimal], str] = money,
) -> StackedChart:
    """A stacked bar chart: one bar per column (``(key, label)``, in order), one segment per series
    with a value in it (``values[(column key, series)]``; missing or zero: no segment), stacked in
    the order of ``series``. ``margin`` is (top, right, bottom, left) around the plot; ``gap`` the
    share of each column's slot left empty between bars."""
    top, right, bottom, left = margin
    plot_top, plot_bottom, plot_left, plot_right = top, height - bottom, left, width - right
    plot_height = plot_bottom - plot_top
    totals = [sum((values.get((key, name), Decimal(0)) for name in series), Decimal(0)) for key, _ in columns]
    ticks_at = axis(max(totals, default=Decimal(0)))
    ceiling = ticks_at[-1]
    palette = list(colours) if colours is not None else fills(len(series))

    def y_of(value: Decimal) -> float:
        return round(plot_bottom - float(value / ceiling) * plot_height, 2)

    slot = (plot_right - plot_left) / len(columns) if columns else 0.0
    bar_width = round(max(slot * (1 - gap), min(slot, 1.0)), 2)
    every = label_every(len(columns), most_labels)
    bars = []
    for index, ((key, text), total) in enumerate(zip(columns, totals, strict=True)):
        x = round(plot_left + index * slot + (slot - bar_width) / 2, 2)
        segments, base = [], Decimal(0)
        for position, name in enumerate(series):
            value = values.get((key, name), Decimal(0))
            if value <= 0:
                continue
            y_top, y_base = y_of(base + value), y_of(base)
            segments.append(Segment(series=name, value=value, x=x, y=y_top, width=bar_width,
                                    height=round(y_base - y_top, 2), fill=palette[position]))
            base += value
        bars.append(Bar(key=key, label=text if index % every == 0 else "", total=total, x=x, width=bar_width,
                        segments=tuple(segments)))
    ticks = tuple(Tick(value=value, y=y_of(value), label=label(value)) for value in ticks_at)
    return StackedChart(width=width, height=height, left=plot_left, top=plot_top, right=plot_right,
                        bottom=plot_bottom, bars=tuple(bars), ticks=ticks,
                        series=tuple(Series(name, palette[i]) for i, name in enumerate(series)), maximum=ceiling)
