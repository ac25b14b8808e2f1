"""Cron schedules of retraining policies: parsing and the next fire time in a time zone."""

from datetime import UTC, datetime

import pytest

from knowledge.errors import InvalidInput
from training.services.loop.schedule import cron_parse, next_fire_time


def fire(expression, after, zone="UTC"):
    return next_fire_time(cron_parse(expression), after=after, time_zone=zone)


def test_fields_take_ranges_steps_lists_and_names():
    schedule = cron_parse("*/20 9-17 * jan,jul mon-fri")
    assert sorted(schedule.minutes) == [0, 20, 40] and sorted(schedule.hours) == list(range(9, 18))
    assert sorted(schedule.months) == [1, 7] and sorted(schedule.days_of_week) == [1, 2, 3, 4, 5]
    assert sorted(cron_parse("0 0 * * 5-7").days_of_week) == [0, 5, 6]  # 7 is Sunday too


@pytest.mark.parametrize(
    ("expression", "message"),
    [("", "five fields"), ("0 3 * *", "five fields"), ("60 * * * *", "minute field"), ("0 24 * * *", "hour field"),
     ("0 0 0 * *", "day of month field"), ("0 0 * 13 *", "month field"), ("0 0 * * funday", "day of week field")],
)  # fmt: skip
def test_bad_expressions_are_refused_naming_the_field(expression, message):
    with pytest.raises(InvalidInput, match=message):
        cron_parse(expression)


def test_the_next_time_is_strictly_after_the_given_moment():
    assert fire("0 3 * * *", datetime(2026, 12, 2, 2, 59, tzinfo=UTC)) == datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    assert fire("0 3 * * *", datetime(2026, 12, 2, 3, 0, tzinfo=UTC)) == datetime(2026, 12, 3, 3, 0, tzinfo=UTC)
    # Friday 4 December 2026, after 9:00: the next weekday morning is Monday.
    assert fire("0 9 * * 1-5", datetime(2026, 12, 4, 10, 0, tzinfo=UTC)) == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert fire("0 0 29 2 *", datetime(2026, 12, 4, tzinfo=UTC)) == datetime(2028, 2, 29, tzinfo=UTC)


def test_both_day_fields_restricted_means_either_matches_as_in_cron():
    # The 13th, or any Friday: Friday 11 December comes before Sunday 13 December.
    assert fire("0 0 13 * 5", datetime(2026, 12, 4, 10, 0, tzinfo=UTC)) == datetime(2026, 12, 11, tzinfo=UTC)


def test_times_are_read_in_the_policys_time_zone_across_daylight_saving_changes():
    # 03:00 in Berlin is 02:00 UTC in winter and 01:00 UTC after the clocks go forward (29 March 2026).
    assert fire("0 3 * * *", datetime(2026, 3, 28, 0, 0, tzinfo=UTC), "Europe/Berlin") == datetime(2026, 3, 28, 2, 0, tzinfo=UTC)
    assert fire("0 3 * * *", datetime(2026, 3, 28, 12, 0, tzinfo=UTC), "Europe/Berlin") == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    # 02:30 does not exist in Berlin on 29 March: that day is skipped.
    assert fire("30 2 * * *", datetime(2026, 3, 28, 12, 0, tzinfo=UTC), "Europe/Berlin") == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="not a known time zone"):
        fire("0 3 * * *", datetime(2026, 3, 28, tzinfo=UTC), "Nowhere/Town")
