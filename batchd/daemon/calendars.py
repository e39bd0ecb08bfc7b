"""Business calendars (``[[calendars]]``, DESIGN §7): which dates are business days.

A calendar is its open weekdays (Monday to Friday by default), less the holidays of the
markets and countries it names from the ``holidays`` library (``ECB`` for TARGET2, ``NYSE``,
``DE``, ``DE-BY`` for a country's subdivision...), less its extra closing ``dates`` (inline,
or one per line in ``file``: ``2026-12-31 Bank closing``, ``#`` starts a comment).

:func:`calendar_problems` is the one validation of a calendar's settings: ``batchd
check-config``, ``batchd run`` and a reload all refuse exactly what it finds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchd.daemon.settings import WEEKDAYS, CalendarSettings
from batchd.errors import NoSuchCalendar

if TYPE_CHECKING:
    import holidays as holidays_library

# Business-day offsets look at most this far for a business day: a calendar closed for a
# whole year is a mistake, not something to walk for ever.
_SEARCH_LIMIT = timedelta(days=366)


@dataclass(frozen=True)
class Day:
    """One date of a calendar: a business day, or closed with the reason."""

    date: date
    business: bool
    reason: str | None = None  # "Saturday", "Good Friday", "closing day (file)"...

    def view(self) -> dict[str, Any]:
        return {"date": self.date.isoformat(), "business": self.business, "reason": self.reason}


def _holiday_source(name: str) -> holidays_library.HolidayBase:
    """The holidays of a market (``ECB``, ``NYSE``, ``XLON``...) or a country, optionally
    with a subdivision (``DE``, ``DE-BY``, ``US-NY``); ValueError when the library has no
    such market, country or subdivision."""
    # Imported here: only a calendar that names holidays needs the library (its country
    # tables would otherwise stay in every daemon's memory).
    import holidays as holidays_library

    code = name.strip()
    if code.upper() in holidays_library.list_supported_financial():
        return holidays_library.financial_holidays(code.upper())
    country, _, subdivision = code.partition("-")
    countries = holidays_library.list_supported_countries()
    if country.upper() not in countries:
        raise ValueError(
            f"unknown market or country {name!r} (markets such as ECB, NYSE, XLON; countries "
            "as ISO codes such as DE, US, GB, with a subdivision as DE-BY)"
        )
    subdivisions = countries[country.upper()]
    if subdivision and subdivision not in subdivisions:
        # The library's subdivision codes are upper case, bar a few named ones.
        match = next((s for s in subdivisions if s.upper() == subdivision.upper()), None)
        if match is None:
            known = ", ".join(subdivisions) or "none"
            raise ValueError(
                f"{country.upper()} has no subdivision {subdivision!r} (known: {known})"
            )
        subdivision = match
    return holidays_library.country_holidays(country.upper(), subdiv=subdivision or None)


def _read_dates_file(path: Path) -> dict[date, str]:
    """Closing days from a file: one ISO date a line, an optional name after it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text: {error}") from None
    found: dict[date, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        first, _, rest = content.partition(" ")
        try:
            day = date.fromisoformat(first)
        except ValueError:
            raise ValueError(
                f"{path} line {number}: {first!r} is not a date (YYYY-MM-DD)"
            ) from None
        found[day] = rest.strip() or f"closing day ({path.name})"
    return found


class Calendar:
    """A business calendar built from its settings (see :func:`build_calendar`)."""

    def __init__(
        self,
        name: str,
        weekdays: frozenset[int],
        sources: list[holidays_library.HolidayBase],
        closing: dict[date, str],
    ) -> None:
        self.name = name
        self.weekdays = weekdays  # 0 = Monday, as date.weekday()
        self._sources = sources
        self._closing = closing
        # The library fills in a year's holidays on first lookup: one lookup at a time.
        self._lock = threading.Lock()

    def closed_because(self, day: date) -> str | None:
        """Why ``day`` is not a business day (the holiday's name), or None if it is one."""
        if day.weekday() not in self.weekdays:
            return day.strftime("%A")
        if day in self._closing:
            return self._closing[day]
        with self._lock:
            for source in self._sources:
                name = source.get(day)
                if name is not None:
                    return str(name)
        return None

    def is_business_day(self, day: date) -> bool:
        return self.closed_because(day) is None

    def shift(self, day: date, count: int) -> date:
        """The ``count``-th business day after ``day`` (before it when negative); ``day``
        itself need not be a business day. ValueError if none comes within a year."""
        step = timedelta(days=1 if count >= 0 else -1)
        left, current, limit = abs(count), day, day + step * _SEARCH_LIMIT.days
        while left:
            current += step
            if current == limit:
                raise ValueError(f"calendar {self.name!r} has no business day near {day}")
            if self.is_business_day(current):
                left -= 1
        return current

    def shift_value(self, value: date, count: int) -> date:
        """:meth:`shift` for a template value: a datetime keeps its time of day."""
        if isinstance(value, datetime):
            shifted = self.shift(value.date(), count)
            return datetime.combine(shifted, value.timetz()).replace(fold=value.fold)
        return self.shift(value, count)

    def days(self, first: date, last: date) -> Iterator[Day]:
        """Every date from ``first`` to ``last``, business or closed."""
        current = first
        while current <= last:
            reason = self.closed_because(current)
            yield Day(current, reason is None, reason)
            current += timedelta(days=1)


def calendar_problems(settings: CalendarSettings) -> list[tuple[str, ValueError]]:
    """What is wrong with a calendar, as (key within the calendar, error)."""
    return _build(settings)[1]


def build_calendar(settings: CalendarSettings) -> Calendar:
    """The calendar of valid settings; ValueError naming the first bad key otherwise."""
    calendar, problems = _build(settings)
    if problems:
        key, error = problems[0]
        raise ValueError(f"calendar {settings.name!r}: {key}: {error}")
    return calendar


def _build(settings: CalendarSettings) -> tuple[Calendar, list[tuple[str, ValueError]]]:
    problems: list[tuple[str, ValueError]] = []
    weekdays = frozenset(WEEKDAYS.index(day) for day in settings.weekdays)
    if not weekdays:
        problems.append(("weekdays", ValueError("a calendar needs at least one open weekday")))
    names = [settings.holidays] if isinstance(settings.holidays, str) else settings.holidays
    sources = []
    for name in names:
        try:
            sources.append(_holiday_source(name))
        except (ValueError, NotImplementedError) as error:
            problems.append(("holidays", ValueError(str(error))))
    closing = {day: "closing day" for day in settings.dates}
    if settings.file is not None:
        try:
            closing.update(_read_dates_file(settings.file))
        except ValueError as error:
            problems.append(("file", error))
    return Calendar(settings.name, weekdays, sources, closing), problems


def business_date(fire_time: datetime, day_start: time) -> date:
    """The business date of a fire: the date of ``fire_time`` (aware, in the schedule's
    zone) on a wall clock turned back by ``day_start`` (Control-M's new day time). Wall
    time, not elapsed time: with ``day_start = 06:00`` a fire at 05:59 belongs to the day
    before and one at 06:00 to its own day, whether or not clocks changed in between."""
    if fire_time.time() < day_start:
        return fire_time.date() - timedelta(days=1)
    return fire_time.date()


__all__ = [
    "Calendar",
    "Day",
    "NoSuchCalendar",
    "build_calendar",
    "business_date",
    "calendar_problems",
]
