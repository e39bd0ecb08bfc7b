"""Schedule triggers: a schedule's settings as an APScheduler 3 trigger, and the executor
that tells each run which fire time it is for. Only this module and
:mod:`batchd.daemon.scheduler` know APScheduler.

Every trigger gives its fire times as aware UTC, so that APScheduler, like batchd, compares
instants and never wall times: two wall times of one time zone in the hour repeated when
clocks go back are equal to Python, whatever their ``fold``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.triggers.base import BaseTrigger

from batchd.daemon.cron import CronExpression
from batchd.daemon.durations import format_duration
from batchd.daemon.settings import ScheduleSettings

#: What the scheduler holds of a trigger (an APScheduler one, which other modules need not know).
Trigger = BaseTrigger

# "Strictly after" for a search from an instant that may itself be a fire time.
_TICK = timedelta(microseconds=1)


class _GridTrigger(BaseTrigger):  # type: ignore[misc]
    """Fire times on a grid — a crontab expression's (:mod:`batchd.daemon.cron`) or an
    interval's — from ``start`` to ``end``, each delayed by up to ``jitter`` seconds.

    The next grid time is the first after the previous fire, which is its own grid time
    plus less than the jitter, so delays never add up; ``end`` is checked on the grid time,
    before the jitter. (APScheduler 3's IntervalTrigger adds each delay to the next fire
    time and checks ``end`` after jittering: its fires drift off the grid and the last one
    is lost.)
    """

    def __init__(
        self,
        following: Callable[[datetime], datetime | None],
        text: str,
        start: datetime | None,
        end: datetime | None,
        jitter: int | None,
    ) -> None:
        self.following, self.text, self.jitter = following, text, jitter
        self.start = start.astimezone(UTC) if start is not None else None
        self.end = end.astimezone(UTC) if end is not None else None

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        # The first fire after the previous one, or else the first from now on.
        after = (previous_fire_time or now - _TICK).astimezone(UTC)
        if self.start is not None:
            after = max(after, self.start - _TICK)
        following = self.following(after)
        if following is None or (self.end is not None and following > self.end):
            return None
        jittered: datetime = self._apply_jitter(following, self.jitter, now)
        return jittered

    def __str__(self) -> str:
        return self.text


def build_trigger(schedule: ScheduleSettings, default_timezone: str) -> BaseTrigger:
    """The APScheduler trigger of a schedule; ValueError names what is wrong.

    Cron expressions have crontab's meaning (:mod:`batchd.daemon.cron`). Fire times are
    aware UTC: cron ones from the wall clock of the schedule's time zone, interval ones
    counted in elapsed time.
    """
    zone_name = schedule.timezone or default_timezone
    try:
        timezone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {zone_name!r}") from None
    jitter = int(schedule.jitter.total_seconds()) if schedule.jitter else None
    if (schedule.cron is None) == (schedule.interval is None):
        raise ValueError("give exactly one of cron or interval")
    start, end = _in_zone(schedule.start, timezone), _in_zone(schedule.end, timezone)
    if schedule.cron is not None:
        try:
            expression = CronExpression.parse(schedule.cron)
        except ValueError as error:
            raise ValueError(f"bad cron expression {schedule.cron!r}: {error}") from None
        return _GridTrigger(
            functools.partial(expression.next_fire, zone=timezone),
            f"cron[{expression.text}, {timezone}]",
            start,
            end,
            jitter,
        )
    interval = schedule.interval
    assert interval is not None
    if interval.total_seconds() <= 0:
        raise ValueError("interval must be positive")
    # Every node must fire the same instants, so the grid is counted from a fixed time,
    # never from when this daemon started: ``start``, or 1970-01-01 in the time zone.
    anchor = (start or datetime(1970, 1, 1, tzinfo=timezone)).replace(microsecond=0)
    anchor = anchor.astimezone(UTC)  # UTC: the grid is in elapsed time, never wall time

    def following(after: datetime) -> datetime:
        """The first grid time after ``after``."""
        return anchor + max(0, (after - anchor) // interval + 1) * interval

    return _GridTrigger(following, f"interval[{interval}]", start, end, jitter)


def _in_zone(value: datetime | None, timezone: ZoneInfo) -> datetime | None:
    """A config datetime, read in the schedule's time zone when it has no offset."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone) if value.tzinfo is None else value


def validate_schedule(schedule: ScheduleSettings, default_timezone: str) -> None:
    """Raise ValueError if the schedule's trigger cannot be built."""
    build_trigger(schedule, default_timezone)


def describe_trigger(schedule: ScheduleSettings) -> str:
    """The trigger as the config wrote it, e.g. ``cron 30 1 * * 1-5`` or ``interval 15m``."""
    if schedule.cron is not None:
        text = f"cron {schedule.cron}"
    else:
        assert schedule.interval is not None  # a schedule has one of them
        text = f"interval {format_duration(schedule.interval)}"
    return f"{text}, jitter {format_duration(schedule.jitter)}" if schedule.jitter else text


class ScheduledRun:
    """What APScheduler's ``run_job`` uses of a job, with the scheduled run time bound to
    the call: APScheduler 3 does not tell a job which fire time it runs for."""

    def __init__(self, job: Any, run_time: datetime) -> None:
        self.id = job.id
        self._jobstore_alias = job._jobstore_alias
        self.misfire_grace_time = job.misfire_grace_time
        self.func = functools.partial(job.func, *job.args, scheduled=run_time, **job.kwargs)
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}
        self._text = str(job)

    def __str__(self) -> str:
        return self._text


class FireExecutor(ThreadPoolExecutor):  # type: ignore[misc]
    """A thread-pool executor that passes each run its scheduled time (``scheduled=``).
    Jobs are coalesced, so only the newest of several due run times fires."""

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        super()._do_submit_job(ScheduledRun(job, run_times[-1]), run_times[-1:])


__all__ = ["FireExecutor", "build_trigger", "describe_trigger", "validate_schedule"]
