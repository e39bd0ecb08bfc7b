"""What the scheduler knows of one schedule and one fire, without the machinery that fires
it: a schedule's entry (triggers, time zone, calendar), its business dates, the fire times
catch-up finds, the parameters and dependencies rendered for a fire, and how a fire's
outcome is logged. :mod:`batchd.daemon.scheduler` drives these."""

from __future__ import annotations

import copy
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from batchd.daemon.calendars import Calendar, business_date
from batchd.daemon.schedule_triggers import Trigger, build_trigger
from batchd.daemon.settings import ScheduleSettings
from batchd.daemon.templates import TemplateError, render_params

log = logging.getLogger(__name__)

# The variables a schedule's parameter templates may use.
SCHEDULE_VARIABLES = ("fire_time", "fire_date", "business_date", "schedule")
# What a fire can come to (also the ``outcome`` label of the fire counter). "missed" is a
# fire APScheduler dropped because it came later than ``misfire_grace``; "closed" one on a
# date that is not a business day of the schedule's calendar (nothing runs); "waiting" one
# recorded to start once its ``after`` jobs completed, or be given up
# ("dependency_timeout") after ``wait_timeout``.
OUTCOMES = (
    "started",
    "complete",
    "running",
    "invalid",
    "error",
    "duplicate",
    "elsewhere",
    "missed",
    "closed",
    "waiting",
    "dependency_timeout",
)

# At most this many missed fires of one schedule are caught up (the newest ones).
CATCH_UP_LIMIT = 1000
# Catch-up stops looking for missed fires after this many (a per-second interval down for
# a week must not keep start-up busy for minutes).
_CATCH_UP_SCAN_LIMIT = 100_000


@dataclass(frozen=True)
class FireResult:
    """What one fire of a schedule came to (``outcome`` is one of :data:`OUTCOMES`)."""

    schedule: str
    fire_time: datetime
    outcome: str
    params: dict[str, Any] | None = None
    execution_id: int | None = None
    message: str | None = None
    error: BaseException | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class ScheduleEntry:
    """A schedule with its triggers: ``trigger`` is what APScheduler runs (with jitter),
    ``nominal`` the same without jitter, which names fire times and finds missed ones."""

    settings: ScheduleSettings
    trigger: Trigger
    nominal: Trigger
    timezone: ZoneInfo
    calendar: Calendar | None

    @property
    def name(self) -> str:
        return self.settings.name

    def business_date(self, fire_time: datetime) -> date:
        return business_date(fire_time.astimezone(self.timezone), self.settings.day_start)

    def closed_because(self, fire_time: datetime) -> str | None:
        """Why a fire time's business date is not a business day, or None if it is."""
        if self.calendar is None:
            return None
        return self.calendar.closed_because(self.business_date(fire_time))


def make_entry(
    settings: ScheduleSettings, default_timezone: str, calendars: dict[str, Calendar]
) -> ScheduleEntry:
    trigger = build_trigger(settings, default_timezone)
    nominal = copy.copy(trigger)
    nominal.jitter = None
    calendar = None
    if settings.calendar is not None:
        calendar = calendars.get(settings.calendar)
        if calendar is None:
            raise ValueError(f"schedule {settings.name!r}: no calendar named {settings.calendar!r}")
    zone = ZoneInfo(settings.timezone or default_timezone)
    return ScheduleEntry(settings, trigger, nominal, zone, calendar)


def utc(value: datetime | None) -> datetime | None:
    """An aware datetime as UTC, the zone in which batchd compares and keys fire times."""
    return value.astimezone(UTC) if value is not None else None


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def missed_fire_times(entry: ScheduleEntry, last: datetime | None, now: datetime) -> list[datetime]:
    """The fire times of ``name`` (aware UTC) after its newest recorded fire, up to the
    clock's now (the newest :data:`CATCH_UP_LIMIT` of them), oldest first.

    Instants are compared in UTC: two wall times of one time zone compare equal in the
    hour repeated when clocks go back, whatever their ``fold``."""
    name = entry.name
    now = now.astimezone(UTC)
    since = last.astimezone(UTC) if last is not None else _catch_up_start(entry)
    if since is None or since >= now:
        return []
    missed: deque[datetime] = deque(maxlen=CATCH_UP_LIMIT)
    # Never fired: from the trigger's first fire time at or after the start (the fire
    # "after" an instant before the start would be one interval late for an interval).
    previous, found = (since if last is not None else None), 0
    for _ in range(_CATCH_UP_SCAN_LIMIT):
        if previous is None:
            following = utc(entry.nominal.get_next_fire_time(None, since))
        else:
            following = utc(entry.nominal.get_next_fire_time(previous, now))
        if following is None or following > now or (previous and following <= previous):
            break
        previous = following
        if entry.closed_because(following) is None:
            missed.append(following)
            found += 1
    else:
        log.warning(
            "schedule %s: more than %d fires since %s; catch-up looks no further than %s",
            name,
            _CATCH_UP_SCAN_LIMIT,
            since.isoformat(),
            previous.isoformat() if previous else "?",
        )
    if found > CATCH_UP_LIMIT:
        log.warning(
            "schedule %s missed %d fires since %s: only the newest %d are caught up",
            name,
            found,
            since.isoformat(),
            CATCH_UP_LIMIT,
        )
    return list(missed)


def _catch_up_start(entry: ScheduleEntry) -> datetime | None:
    """Where a schedule that never fired catches up from: its ``start`` (as Airflow's
    catch-up from ``start_date``), with ``catch_up = "all"`` only."""
    start = entry.settings.start
    if entry.settings.catch_up != "all" or start is None:
        return None
    if start.tzinfo is None:
        start = start.replace(tzinfo=entry.timezone)
    return start.astimezone(UTC)


def nominal_time(entry: ScheduleEntry, scheduled: datetime) -> datetime:
    """The un-jittered fire time (UTC) of a run APScheduler delayed by up to ``jitter``:
    the latest nominal fire time not after it, so a fire is named the same whatever its
    random delay. (The search starts the jitter and a whole interval back: more than
    enough, as the triggers keep every run within its jitter of its grid time.)"""
    jitter = entry.settings.jitter
    if not jitter:
        return scheduled
    lookback = jitter + (entry.settings.interval or timedelta(0))
    nominal = scheduled
    candidate = utc(entry.nominal.get_next_fire_time(None, scheduled - lookback))
    while candidate is not None and candidate <= scheduled:
        nominal = candidate
        candidate = utc(entry.nominal.get_next_fire_time(candidate, scheduled))
    return nominal


def fire_plan(entry: ScheduleEntry, fire_time: datetime) -> dict[str, Any]:
    """What is recorded with a fire: its parameters (None when they cannot be rendered:
    the start then reports why), what it waits for and until when, its deadline."""
    settings = entry.settings
    try:
        params = render(entry, settings.params, fire_time)
        waits_for = [
            {"job": after.job, "params": render(entry, after.params, fire_time)}
            for after in settings.after
        ]
    except TemplateError:
        return {"params": None}
    return {
        "params": params,
        "waits_for": waits_for,
        "wait_until": fire_time + settings.wait_timeout if settings.wait_timeout else None,
        "deadline_at": fire_time + settings.deadline if settings.deadline else None,
    }


def render(entry: ScheduleEntry, templates: dict[str, Any], fire_time: datetime) -> dict[str, Any]:
    shift = entry.calendar.shift_value if entry.calendar is not None else None
    return render_params(templates, variables(entry, fire_time), shift)


def variables(entry: ScheduleEntry, fire_time: datetime) -> dict[str, Any]:
    fire_date: date = fire_time.date()
    return {
        "fire_time": fire_time,
        "fire_date": fire_date,
        "business_date": entry.business_date(fire_time),
        "schedule": entry.name,
    }


def log_result(result: FireResult) -> None:
    detail = (
        f" execution {result.execution_id}"
        if result.execution_id is not None
        else f": {result.message}"
        if result.message
        else ""
    )
    level = {"invalid": logging.WARNING, "error": logging.ERROR}.get(result.outcome, logging.INFO)
    log.log(
        level,
        "schedule %s fire %s params %s: %s%s",
        result.schedule,
        result.fire_time.isoformat(),
        to_json(result.params),
        result.outcome,
        detail,
        exc_info=result.error,
    )


__all__ = [
    "CATCH_UP_LIMIT",
    "OUTCOMES",
    "SCHEDULE_VARIABLES",
    "FireResult",
    "ScheduleEntry",
    "fire_plan",
    "iso",
    "log_result",
    "make_entry",
    "missed_fire_times",
    "nominal_time",
    "render",
    "to_json",
    "utc",
    "variables",
]
