"""rag.charts: round y ticks covering the data, x labels that neither overlap nor leave the
box, bars and dots placed by value, the marked dot."""

import pytest

from rag.charts import WIDTH, X_LABEL_SLOT, bar_chart, line_chart, nice_ticks, tick_text


@pytest.mark.parametrize("low, high, expected", [
    (0, 7, [0, 2, 4, 6, 8]),
    (0, 100, [0, 25, 50, 75, 100]),
    (0.42, 0.58, [0.4, 0.45, 0.5, 0.55, 0.6]),
    (0, 0, [0, 0.25, 0.5, 0.75, 1.0]),
    (2.0, 0.5, [0.5, 1.0, 1.5, 2.0]),
])
def test_ticks_are_round_and_cover_the_data(low, high, expected):
    assert nice_ticks(low, high) == pytest.approx(expected)


def test_tick_text_shows_as_many_decimals_as_the_step_needs():
    assert [tick_text(v, 0.05) for v in (0.4, 0.45)] == ["0.40", "0.45"]
    assert [tick_text(v, 25) for v in (0, 25)] == ["0", "25"]
    assert tick_text(0.5, 0.25) == "0.50"


def test_thirty_days_of_bars_get_labels_a_slot_apart_inside_the_box():
    values = [float(i % 5) for i in range(30)]
    chart = bar_chart(values, labels=[f"{i + 1} Nov" for i in range(30)], titles=[f"day {i}" for i in range(30)])
    xs = [label.x for label in chart.x_labels]
    assert all(b - a >= X_LABEL_SLOT for a, b in zip(xs, xs[1:]))
    assert chart.x_labels[-1].text == "30 Nov" and chart.x_labels[0].text == "1 Nov"
    for label in chart.x_labels:  # an anchored label's text runs from x to at most a slot away
        start = label.x - {"start": 0, "middle": X_LABEL_SLOT / 2, "end": X_LABEL_SLOT}[label.anchor]
        assert 0 <= start and start + X_LABEL_SLOT <= WIDTH + 1
    assert [t.text for t in chart.ticks] == ["0", "1", "2", "3", "4"]
    tallest = max(chart.bars, key=lambda bar: bar.value)
    assert tallest.y == pytest.approx(chart.plot_top) and chart.bars[0].height == 0
    assert chart.bars[1].height > 2 and chart.bars[3].title == "day 3"


def test_a_line_marks_one_dot_and_spreads_the_others():
    chart = line_chart([0.5, 0.62, 0.58], labels=["v1", "v2", "v3"], titles=["a", "b", "c"], marked=1)
    assert chart.marked.title == "b" and [dot.marked for dot in chart.dots] == [False, True, False]
    assert chart.dots[0].x < chart.dots[1].x < chart.dots[2].x
    assert chart.dots[1].y < chart.dots[2].y < chart.dots[0].y  # higher value, higher on the page
    assert chart.ticks[0].value <= 0.5 and chart.ticks[-1].value >= 0.62
    assert chart.line.split()[0] == f"{chart.dots[0].x},{chart.dots[0].y}"
    with pytest.raises(ValueError):
        line_chart([], labels=[], titles=[])


def test_tick_text_of_a_step_measured_between_two_float_ticks():
    assert tick_text(0.5, 0.55 - 0.5) == "0.50"
