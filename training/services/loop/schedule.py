"""Cron schedules of retraining policies: parsing a five-field expression and the next time it
fires after a moment, in the policy's time zone.

The fields are parsed by Celery's `crontab_parser` (ranges, steps, lists, month and weekday
names, as beat's own crontab schedules take them); only the next-fire search is ours, because
Celery's crontab answers "how long until the next run" for beat's clock, not "when is the next
run after this moment in that zone", which the loop page and the tick need.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import crontab_parser

from knowledge.errors import InvalidInput

# Far enough for "29 2 29 2 *" (the next 29 February falls within 8 years).
_SEARCH_DAYS = 366 * 8 + 2


@dataclass(frozen=True)
class CronSchedule:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 = Sunday, as in cron
    any_day_of_month: bool
    any_day_of_week: bool

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days_of_month
        in_week = (day.isoweekday() % 7) in self.days_of_week
        # Cron's rule: with both day fields restricted, either one matching is enough.
        if self.any_day_of_month:
            return in_week
        if self.any_day_of_week:
            return in_month
        return in_month or in_week


def cron_parse(expression: str) -> CronSchedule:
    """A five-field cron expression ("minute hour day-of-month month day-of-week")."""
    fields = (expression or "").split()
    if len(fields) != 5:
        raise InvalidInput(
            f"The schedule {expression!r} must have five fields (minute hour day-of-month month day-of-week), "
            f"e.g. '0 3 * * *' for 03:00 every day."
        )
    names = ("minute", "hour", "day of month", "month", "day of week")
    parsers = (crontab_parser(60), crontab_parser(24), crontab_parser(31, 1), crontab_parser(12, 1), crontab_parser(7))
    values = []
    for name, parser, text in zip(names, parsers, fields, strict=True):
        if name == "day of week":
            text = _sunday_as_zero(text)
        try:
            values.append(frozenset(parser.parse(text)))
        except (ValueError, crontab_parser.ParseException) as error:
            raise InvalidInput(f"The {name} field {text!r} of the schedule {expression!r} is not valid: {error}") from None
    return CronSchedule(
        expression=" ".join(fields),
        minutes=values[0],
        hours=values[1],
        days_of_month=values[2],
        months=values[3],
        days_of_week=values[4],
        any_day_of_month=fields[2] == "*",
        any_day_of_week=fields[4] == "*",
    )


def _sunday_as_zero(text: str) -> str:
    """Cron allows 7 for Sunday ("7", "5-7"); Celery's parser takes 0-6."""
    parts = []
    for part in text.split(","):
        if part == "7":
            part = "0"
        elif part.endswith("-7"):
            part = f"{part[:-2]}-6,0"
        parts.append(part)
    return ",".join(parts)


def time_zone_get(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"{name!r} is not a known time zone (use an IANA name such as 'UTC' or 'Europe/Berlin').") from None


def next_fire_time(schedule: CronSchedule, *, after: datetime, time_zone: str = "UTC") -> datetime:
    """The first minute strictly after `after` that the schedule names, as an aware UTC time.

    Local wall-clock times are read in `time_zone`: a time skipped by a daylight-saving change
    never fires that day, and a repeated one fires once (its first occurrence).
    """
    zone = time_zone_get(time_zone)
    local_after = after.astimezone(zone)
    day = local_after.date()
    for _ in range(_SEARCH_DAYS):
        if schedule.day_matches(day):
            for hour in sorted(schedule.hours):
                for minute in sorted(schedule.minutes):
                    moment = datetime.combine(day, time(hour, minute), tzinfo=zone)
                    # A wall-clock time that does not exist that day comes back shifted; skip it.
                    if moment.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != moment.replace(tzinfo=None):
                        continue
                    if moment > local_after:
                        return moment.astimezone(UTC)
        day += timedelta(days=1)
    raise InvalidInput(f"The schedule {schedule.expression!r} never fires.")
