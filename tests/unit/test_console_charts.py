"""The console's chart geometry (controlplane/web/charts.py): nice axes, stacked bars, colours."""

from __future__ import annotations

from decimal import Decimal

import pytest

from controlplane.web import charts

D = Decimal


@pytest.mark.parametrize(("maximum", "step"), [
    (D("7"), D("2")), (D("10"), D("2.5")), (D("1"), D("0.25")), (D("0.03"), D("0.01")), (D("120"), D("50")),
    (D("3999"), D("1000")), (D("4000"), D("1000")), (D("4001"), D("2000")), (D("0.0004"), D("0.0001")),
])
def test_a_nice_step_is_one_two_two_and_a_half_or_five_times_a_power_of_ten(maximum: Decimal, step: Decimal) -> None:
    assert charts.nice_step(maximum) == step


def test_the_axis_runs_from_zero_to_the_first_step_at_or_above_the_maximum() -> None:
    assert charts.axis(D("7")) == [0, 2, 4, 6, 8]
    assert charts.axis(D("8")) == [0, 2, 4, 6, 8]
    assert charts.axis(D("0.35")) == [0, D("0.1"), D("0.2"), D("0.3"), D("0.4")]
    assert charts.axis(D(0)) == [0, D("0.25"), D("0.5"), D("0.75"), 1]  # nothing spent: a unit axis
    with pytest.raises(ValueError):
        charts.nice_step(D(0))


def test_money_labels_are_round() -> None:
    assert charts.money(D(0)) == "$0"
    assert charts.money(D(2000)) == "$2,000"
    assert charts.money(D("2.5")) == "$2.50"
    assert charts.money(D("0.25")) == "$0.25"
    assert charts.money(D("0.0005")) == "$0.0005"


def test_labels_are_thinned_so_that_they_do_not_overlap() -> None:
    assert charts.label_every(10, 16) == 1
    assert charts.label_every(31, 16) == 2
    assert charts.label_every(90, 16) == 6


def test_one_bar_per_column_with_one_segment_per_series_stacked_in_order() -> None:
    columns = [("2026-03-01", "1"), ("2026-03-02", "2"), ("2026-03-03", "3")]
    values = {("2026-03-01", "a"): D("3"), ("2026-03-01", "b"): D("1"), ("2026-03-02", "b"): D("2"),
              ("2026-03-03", "a"): D(0)}
    chart = charts.stacked(columns, ["a", "b"], values, width=400, height=200, margin=(0, 0, 0, 100), gap=0.5)
    assert [bar.key for bar in chart.bars] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert [bar.total for bar in chart.bars] == [D(4), D(2), D(0)]
    assert chart.maximum == D(4) and [t.value for t in chart.ticks] == [0, 1, 2, 3, 4]
    first, second, third = chart.bars
    # Slots of 100 px, bars of 50 px centred in them.
    assert (first.x, first.width, second.x, third.x) == (125.0, 50.0, 225.0, 325.0)
    # The first series at the bottom (200 is the baseline), the second stacked on it.
    a, b = first.segments
    assert (a.series, a.y, a.height, a.fill) == ("a", 50.0, 150.0, charts.PALETTE[0])
    assert (b.series, b.y, b.height, b.fill) == ("b", 0.0, 50.0, charts.PALETTE[1])
    [only] = second.segments
    assert (only.series, only.y, only.height) == ("b", 100.0, 100.0)
    assert third.segments == ()  # zero and missing values draw nothing
    assert [(s.label, s.fill) for s in chart.series] == [("a", charts.PALETTE[0]), ("b", charts.PALETTE[1])]
    assert [(t.y, t.label) for t in chart.ticks] == [(200.0, "$0"), (150.0, "$1"), (100.0, "$2"), (50.0, "$3"),
                                                    (0.0, "$4")]


def test_segments_of_a_bar_fill_exactly_its_height() -> None:
    columns = [(str(day), str(day)) for day in range(1, 32)]
    values = {(str(day), name): D(day) / D(7) * (i + 1) for day in range(1, 32) for i, name in enumerate("xyz")}
    chart = charts.stacked(columns, list("xyz"), values)
    for bar in chart.bars:
        stacked_height = sum(s.height for s in bar.segments)
        assert stacked_height == pytest.approx(chart.bottom - bar.segments[-1].y, abs=0.05)
        assert all(s.y >= chart.top - 0.01 and s.y + s.height <= chart.bottom + 0.01 for s in bar.segments)
    assert len([bar for bar in chart.bars if bar.label]) == 16  # every other day labelled
    assert chart.bars[0].label == "1" and chart.bars[1].label == ""


def test_an_empty_chart_still_has_an_axis() -> None:
    chart = charts.stacked([], [], {})
    assert chart.bars == () and [t.label for t in chart.ticks][-1] == "$1"


def test_other_is_grey_and_colours_repeat() -> None:
    assert charts.fills(3, other=True) == [charts.PALETTE[0], charts.PALETTE[1], charts.OTHER]
    assert charts.fills(len(charts.PALETTE) + 1)[-1] == charts.PALETTE[0]
    assert charts.fills(0, other=True) == []


def _luminance(colour: str) -> float:
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


@pytest.mark.parametrize("colour", [*charts.PALETTE, charts.OTHER])
def test_every_colour_stands_out_from_white(colour: str) -> None:
    assert (1.05) / (_luminance(colour) + 0.05) >= 3.0  # WCAG 2.1 non-text contrast
