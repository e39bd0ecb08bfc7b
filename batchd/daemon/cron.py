"""Crontab expressions: what they mean, and when they fire in a time zone.

The meaning is Vixie/Debian cron's: five fields (minute, hour, day of month, month, day of
week) or a macro (``@daily`` ...); weekdays 0 and 7 are Sunday; the day of month and the day
of week must both match when either field starts with ``*`` (``*/2`` included), and either
one is enough when both are restricted.

Fire times are instants (aware UTC). Across daylight-saving changes they follow Debian cron:

- an expression whose minute and hour fields are both fixed (neither starts with ``*``)
  fires once a day as the wall clock reads: a time inside the hour that is repeated when
  clocks go back fires at its first occurrence only, and a time inside the hour that is
  skipped when clocks go forward fires at the first instant after the jump (02:30 -> 03:00);
- any other expression (``*/15 * * * *``, ``0 * * * *``) fires at every instant whose wall
  time matches: twice in a repeated hour, not at all in a skipped one.

This module does not know APScheduler; :mod:`batchd.daemon.scheduler` adapts it.
"""

from __future__ import annotations

import bisect
import calendar
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_ITEM = re.compile(
    r"(?:(?P<all>\*)|(?P<first>[0-9]+|[a-z]+)(?:-(?P<last>[0-9]+|[a-z]+))?)(?:/(?P<step>[0-9]+))?"
)
# No time zone changes its UTC offset twice within this span; fire times are searched
# segment by segment of constant offset, each at most this long.
_SEGMENT = timedelta(hours=6)
# UTC offsets lie within -12 h and +14 h: an instant is at most 14 h before its wall time.
_MAX_OFFSET = timedelta(hours=14)
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] is the value low + i
    wraps: bool = False  # a range may wrap round (day of week: "fri-mon")


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("day of week", 0, 7, _WEEKDAYS, wraps=True),
)


def _value(field: _Field, token: str) -> int:
    if token.isdigit():
        number = int(token)
    elif token in field.names:
        number = field.low + field.names.index(token)
    else:
        raise ValueError(f"unknown {field.name} {token!r}")
    if not field.low <= number <= field.high:
        raise ValueError(f"{field.name} {token} is not in {field.low}-{field.high}")
    return number


def _parse_field(field: _Field, text: str) -> frozenset[int]:
    """The values of one crontab field: lists of ``*``, ``N``, ``N-M``, each with ``/step``
    (``N/step`` runs from N to the end of the field)."""
    values: set[int] = set()
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"bad {field.name} {item!r}")
        step = int(match["step"] or 1)
        if step < 1:
            raise ValueError(f"bad step in {field.name} {item!r}")
        if match["all"]:
            first, last = field.low, field.high
        else:
            first = _value(field, match["first"])
            if match["last"] is not None:
                last = _value(field, match["last"])
            else:
                last = field.high if match["step"] else first
        if last < first:
            if not field.wraps:
                raise ValueError(f"{field.name} range {item!r} runs backwards")
            last += field.high  # round the end of the week (0 and 7 are both Sunday)
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronExpression:
    """A parsed crontab expression (:meth:`parse`); :meth:`next_fire` finds its fires."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday ... 6 = Saturday
    days_and: bool  # day of month AND day of week must match (either field starts with *)
    fixed_time: bool  # minute and hour fields are both fixed: Debian's DST handling

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """ValueError, saying what is wrong, for anything crontab would refuse."""
        fields = MACROS.get(text.strip().lower(), text).lower().split()
        if len(fields) != 5:
            raise ValueError(f"expected 5 fields, got {len(fields)}")
        minutes, hours, days, months, weekdays = (
            _parse_field(spec, value) for spec, value in zip(_FIELDS, fields, strict=True)
        )
        days_and = fields[2].startswith("*") or fields[4].startswith("*")
        longest = max(calendar.monthrange(2000, month)[1] for month in months)  # 2000: leap
        if days_and and min(days) > longest:
            raise ValueError(f"day of month {fields[2]} never comes in month {fields[3]}")
        return cls(
            text=text,
            minutes=tuple(sorted(minutes)),
            hours=tuple(sorted(hours)),
            days=days,
            months=months,
            weekdays=frozenset(day % 7 for day in weekdays),
            days_and=days_and,
            fixed_time=not fields[0].startswith("*") and not fields[1].startswith("*"),
        )

    # ------------------------------------------------------------------ wall times

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        return in_month and in_week if self.days_and else in_month or in_week

    def next_wall(self, wall: datetime, *, inclusive: bool) -> datetime | None:
        """The first matching wall-clock minute (naive) after ``wall`` (or at it, when
        ``inclusive``); None if there is none for 400 years (the Gregorian cycle)."""
        start = wall if inclusive else wall + timedelta(microseconds=1)
        if start.second or start.microsecond:
            start = start.replace(second=0, microsecond=0) + _MINUTE
        day, hour, minute = start.date(), start.hour, start.minute
        last = date(min(day.year + 400, date.max.year), 1, 1)
        while day < last:
            if day.month not in self.months:
                # on to the 1st of the next month
                day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
                hour = minute = 0
                continue
            if self.matches_day(day):
                found = self._time_of_day(hour, minute)
                if found is not None:
                    return datetime.combine(day, found)
            day, hour, minute = day + timedelta(days=1), 0, 0
        return None

    def _time_of_day(self, hour: int, minute: int) -> time | None:
        """The first matching time of day at or after ``hour:minute``, or None."""
        index = bisect.bisect_left(self.hours, hour)
        if index < len(self.hours) and self.hours[index] == hour:
            at = bisect.bisect_left(self.minutes, minute)
            if at < len(self.minutes):
                return time(hour, self.minutes[at])
            index += 1
        return time(self.hours[index], self.minutes[0]) if index < len(self.hours) else None

    # ------------------------------------------------------------------- instants

    def next_fire(self, after: datetime, zone: ZoneInfo) -> datetime | None:
        """The first fire strictly after the instant ``after`` (aware), as aware UTC; None
        if the expression never fires again.

        The time line is walked in segments of constant UTC offset, where wall time and
        instant map one to one; where the offset changes, the repeated or skipped wall
        times are dealt with as the module docstring says.
        """
        t, inclusive = after.astimezone(UTC), False
        while True:
            offset = _offset(t, zone)
            wall = _naive(t + offset)
            following = self.next_wall(wall, inclusive=inclusive)
            if following is None:
                return None
            fire = (following - offset).replace(tzinfo=UTC)
            horizon = t + _SEGMENT
            change = _offset_change(t, horizon, zone, offset)
            end = change or horizon
            if fire < end or (change is None and fire == end):
                if self.fixed_time and _first_occurrence(following, zone) != fire:
                    t, inclusive = fire, False  # the repeat of a wall time that already fired
                    continue
                return fire
            if change is None:
                # Nothing up to the horizon. A later fire has a matching wall time of at
                # least ``following`` (clocks never go back by a whole segment), so it comes
                # no earlier than that wall time less the largest offset: skip to there.
                skip_to = (following - _MAX_OFFSET).replace(tzinfo=UTC)
                t, inclusive = (skip_to, True) if skip_to > horizon else (horizon, False)
                continue
            shifted = _offset(change, zone)
            if self.fixed_time and shifted > offset and following < _naive(change + shifted):
                return change  # a wall time the clocks jumped over fires right after the jump
            t, inclusive = change, True


def _naive(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


def _offset(moment: datetime, zone: ZoneInfo) -> timedelta:
    offset = moment.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def _offset_change(
    start: datetime, end: datetime, zone: ZoneInfo, offset: timedelta
) -> datetime | None:
    """The first instant in (start, end] whose UTC offset is not ``offset`` (offsets change
    on whole seconds), or None when ``end`` still has it: a segment holds one change at most."""
    if _offset(end, zone) == offset:
        return None
    low, high = math.floor(start.timestamp()), math.ceil(end.timestamp())
    while high - low > 1:  # offset at low is ``offset``, at high it is not
        middle = (low + high) // 2
        if _offset(datetime.fromtimestamp(middle, UTC), zone) == offset:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)


def _first_occurrence(wall: datetime, zone: ZoneInfo) -> datetime:
    """The earlier instant of a wall time (the only one, unless clocks went back over it)."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


__all__ = ["MACROS", "CronExpression"]
