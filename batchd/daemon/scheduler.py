"""Schedules: cron and interval triggers (APScheduler 3.x, imported in this module only).

A schedule fires its job with parameters rendered from the fire time (``fire_time``,
``fire_date``, ``schedule``; see :mod:`batchd.daemon.templates`). Every fire is first claimed
in the repository (:class:`~batchd.repository.TriggerStore`), so a fire time runs at most once
across daemon restarts and across daemons sharing the database; fires missed while the daemon
was down are caught up from the newest recorded fire.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.events import EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from batchd.daemon.settings import ScheduleSettings
from batchd.daemon.templates import TemplateError, render_params
from batchd.engine import JobOperator
from batchd.errors import (
    BatchError,
    InvalidJobParameters,
    JobExecutionAlreadyRunning,
    JobInstanceAlreadyComplete,
)
from batchd.repository import TriggerStore, utc_now

log = logging.getLogger(__name__)

# The variables a schedule's parameter templates may use.
SCHEDULE_VARIABLES = ("fire_time", "fire_date", "schedule")
# What a fire can come to (also the ``outcome`` label of the fire counter). "missed" is a
# fire APScheduler dropped because it came later than ``misfire_grace``.
OUTCOMES = (
    "started",
    "complete",
    "running",
    "invalid",
    "error",
    "duplicate",
    "elsewhere",
    "missed",
)

# At most this many missed fires of one schedule are caught up (the newest ones).
CATCH_UP_LIMIT = 1000
# Catch-up stops looking for missed fires after this many (a per-second interval down for
# a week must not keep start-up busy for minutes).
_CATCH_UP_SCAN_LIMIT = 100_000
# Threads that turn APScheduler's fires into job starts (a start only creates the execution;
# the job itself runs on the operator's pool).
_FIRE_THREADS = 4


class NoSuchSchedule(BatchError, LookupError):
    """No schedule has the given name."""


# ------------------------------------------------------------------------------- triggers

# crontab numbers weekdays from Sunday (0, and 7 again); APScheduler 3 from Monday (0).
# Crontab weekdays are therefore handed to APScheduler as names, never as numbers.
_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_APS_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_ITEM = re.compile(
    r"(?:(?P<all>\*)|(?P<first>[0-9]+|[a-z]+)(?:-(?P<last>[0-9]+|[a-z]+))?)(?:/(?P<step>[0-9]+))?"
)
_CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def _cron_weekday_number(token: str) -> int:
    """A crontab weekday, 0-7 or a name, as a crontab number (Sunday 0; 7 is kept, for ranges
    such as ``1-7``)."""
    if token.isdigit():
        number = int(token)
        if number > 7:
            raise ValueError(f"day of week {token} is not in 0-7")
        return number
    try:
        return _CRON_WEEKDAYS.index(token)
    except ValueError:
        raise ValueError(f"unknown day of week {token!r}") from None


def _cron_weekday_item(item: str) -> set[int]:
    """The days (crontab numbers 0-6) of one item of a crontab day-of-week list: ``*``,
    ``*/2``, ``3``, ``1-5``, ``5-1`` (wraps round the week: Friday to Monday), ``mon-fri/2``."""
    match = _WEEKDAY_ITEM.fullmatch(item)
    if match is None:
        raise ValueError(f"bad day of week {item!r}")
    step = int(match["step"] or 1)
    if step < 1:
        raise ValueError(f"bad step in day of week {item!r}")
    if match["all"]:
        first, last = 0, 6
    else:
        first = _cron_weekday_number(match["first"])
        if match["last"] is not None:
            last = _cron_weekday_number(match["last"])
        else:
            last = 6 if match["step"] else first  # "1/2": from Monday on, every second day
        if last < first:
            last += 7  # a range that wraps round the end of the week
    return {day % 7 for day in range(first, last + 1, step)}


def crontab_day_of_week(field: str) -> str:
    """A crontab day-of-week field in APScheduler 3's terms: weekday names, Monday first.

    ``"1-5"`` -> ``"mon,tue,wed,thu,fri"``; ``"0"`` and ``"7"`` -> ``"sun"``; ``"*"`` stays.
    """
    text = field.strip().lower()
    if text == "*":
        return text
    days: set[int] = set()
    for item in text.split(","):
        days |= _cron_weekday_item(item.strip())
    # crontab number -> APScheduler index (Monday 0), to list the names in its order.
    ordered = sorted(days, key=lambda day: (day - 1) % 7)
    return ",".join(_CRON_WEEKDAYS[day] for day in ordered)


def _cron_trigger(expression: str, timezone: ZoneInfo, jitter: int | None) -> BaseTrigger:
    expression = _CRON_MACROS.get(expression.strip().lower(), expression)
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields, got {len(fields)}")
    minute, hour, day, month, day_of_week = fields
    day_of_week = crontab_day_of_week(day_of_week)
    # Built field by field (as from_crontab does) because from_crontab takes no jitter.
    common: dict[str, Any] = {"minute": minute, "hour": hour, "month": month}
    if not day.startswith("*") and not day_of_week.startswith("*"):
        # cron fires when EITHER the day of month or the day of week matches if both are
        # restricted; APScheduler would require both, so the two are combined.
        return OrTrigger(
            [
                CronTrigger(**common, day=day, day_of_week="*", timezone=timezone),
                CronTrigger(**common, day="*", day_of_week=day_of_week, timezone=timezone),
            ],
            jitter=jitter,
        )
    return CronTrigger(**common, day=day, day_of_week=day_of_week, timezone=timezone, jitter=jitter)


def build_trigger(schedule: ScheduleSettings, default_timezone: str) -> BaseTrigger:
    """The APScheduler trigger of a schedule; ValueError names what is wrong.

    Cron expressions have crontab's meaning: day of week 0 and 7 are Sunday, 1 is Monday;
    a restricted day of month and day of week fire when either matches; ``@daily`` etc.
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
            trigger = _cron_trigger(schedule.cron, timezone, jitter)
        except ValueError as error:
            raise ValueError(f"bad cron expression {schedule.cron!r}: {error}") from None
        return _bounded(trigger, start, end) if start or end else trigger
    assert schedule.interval is not None
    if schedule.interval.total_seconds() <= 0:
        raise ValueError("interval must be positive")
    # Every node must fire the same instants, so the grid is counted from a fixed time,
    # never from when this daemon started: ``start``, or 1970-01-01 in the time zone.
    anchor = start or datetime(1970, 1, 1, tzinfo=timezone)
    return IntervalTrigger(
        seconds=schedule.interval.total_seconds(),
        start_date=anchor.replace(microsecond=0),
        end_date=end,
        timezone=timezone,
        jitter=jitter,
    )


def _in_zone(value: datetime | None, timezone: ZoneInfo) -> datetime | None:
    """A config datetime, read in the schedule's time zone when it has no offset."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone) if value.tzinfo is None else value


def _bounded(trigger: BaseTrigger, start: datetime | None, end: datetime | None) -> BaseTrigger:
    """A cron trigger firing only between ``start`` and ``end``."""
    if isinstance(trigger, CronTrigger):
        trigger.start_date = start
        trigger.end_date = end
        return trigger
    assert isinstance(trigger, OrTrigger)
    for part in trigger.triggers:
        part.start_date, part.end_date = start, end
    return trigger


def validate_schedule(schedule: ScheduleSettings, default_timezone: str) -> None:
    """Raise ValueError if the schedule's trigger cannot be built."""
    build_trigger(schedule, default_timezone)


def describe_trigger(schedule: ScheduleSettings) -> str:
    """The trigger as the config wrote it, e.g. ``cron 30 1 * * 1-5`` or ``interval 0:15:00``."""
    text = f"cron {schedule.cron}" if schedule.cron is not None else f"interval {schedule.interval}"
    return f"{text}, jitter {schedule.jitter}" if schedule.jitter else text


# ------------------------------------------------------------------------ fire execution


class _ScheduledRun:
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


class _FireExecutor(ThreadPoolExecutor):  # type: ignore[misc]
    """A thread-pool executor that passes each run its scheduled time (``scheduled=``).
    Jobs are coalesced, so only the newest of several due run times fires."""

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        super()._do_submit_job(_ScheduledRun(job, run_times[-1]), run_times[-1:])


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
class _Entry:
    """A schedule with its triggers: ``trigger`` is what APScheduler runs (with jitter),
    ``nominal`` the same without jitter, which names fire times and finds missed ones."""

    settings: ScheduleSettings
    trigger: BaseTrigger
    nominal: BaseTrigger
    timezone: ZoneInfo

    @property
    def name(self) -> str:
        return self.settings.name


def _make_entry(settings: ScheduleSettings, default_timezone: str) -> _Entry:
    trigger = build_trigger(settings, default_timezone)
    nominal = copy.copy(trigger)
    nominal.jitter = None
    return _Entry(settings, trigger, nominal, ZoneInfo(settings.timezone or default_timezone))


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# ------------------------------------------------------------------------------ scheduler


class Scheduler:
    """Fires the jobs of the configured schedules through a :class:`JobOperator`.

    ``start()`` first catches up the fires each schedule missed since its newest recorded
    fire (``catch_up``: ``none``, only the ``latest``, or ``all`` of them in order, each its
    own instance), then hands the schedules to an APScheduler ``BackgroundScheduler`` (one
    job each; ``misfire_grace``, coalescing, one run at a time). A fire is claimed in the
    ``store`` before anything starts: a fire time that was claimed before starts nothing
    and is ``"elsewhere"`` (another node sharing the repository claimed it) or a
    ``"duplicate"``. A fire never raises: a job whose instance already
    completed or is running, bad parameters and unexpected errors are logged and counted.

    ``clock`` is the time catch-up and :meth:`fire` use (APScheduler itself runs on wall
    time). ``listener``, if it has ``on_schedule_fire(name, outcome)``, hears every fire.
    """

    def __init__(
        self,
        schedules: Iterable[ScheduleSettings],
        operator: JobOperator,
        store: TriggerStore,
        *,
        timezone: str,
        clock: Callable[[], datetime] = utc_now,
        listener: object | None = None,
    ) -> None:
        self.operator = operator
        self.store = store
        self.timezone = timezone
        self.clock = clock
        self.listener = listener
        self._lock = threading.RLock()
        self._entries = self._build_entries(schedules)
        self._paused = {name for name, entry in self._entries.items() if entry.settings.paused}
        self._last: dict[str, FireResult] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._aps: Any = None  # the BackgroundScheduler while started

    def _build_entries(self, schedules: Iterable[ScheduleSettings]) -> dict[str, _Entry]:
        entries: dict[str, _Entry] = {}
        for settings in schedules:
            if settings.name in entries:
                raise ValueError(f"two schedules are named {settings.name!r}")
            entries[settings.name] = _make_entry(settings, self.timezone)
        return entries

    # ------------------------------------------------------------- start, stop, reload

    def start(self) -> None:
        """Catch up missed fires, then start firing on schedule."""
        with self._lock:
            if self._aps is not None:
                raise RuntimeError("the scheduler is already started")
            self.catch_up()
            aps = BackgroundScheduler(
                timezone=ZoneInfo(self.timezone),
                executors={"default": _FireExecutor(_FIRE_THREADS)},
            )
            aps.add_listener(self._on_missed, EVENT_JOB_MISSED)
            for entry in self._entries.values():
                self._add_job(aps, entry, paused=entry.name in self._paused)
            aps.start()
            self._aps = aps
        log.info("scheduler started with %d schedules", len(self._entries))

    def shutdown(self) -> None:
        """Stop firing (a fire in progress finishes; running jobs are not touched)."""
        with self._lock:
            aps, self._aps = self._aps, None
        if aps is not None:
            aps.shutdown(wait=True)
            log.info("scheduler stopped")

    def reconfigure(self, schedules: Iterable[ScheduleSettings]) -> None:
        """Apply a new list of schedules (SIGHUP): add new ones, remove those that are gone,
        replace those whose settings changed. Unchanged schedules, running jobs and fires in
        progress are not touched. A pause or resume made at run time survives unless the
        schedule's ``paused`` setting itself changed. ValueError (before anything changes)
        if a schedule is bad."""
        new = self._build_entries(schedules)
        with self._lock:
            old = self._entries
            removed = sorted(old.keys() - new.keys())
            changed = sorted(n for n in new if n not in old or old[n].settings != new[n].settings)
            for name in removed:
                self._paused.discard(name)
                if self._aps is not None:
                    self._aps.remove_job(name)
            for name in changed:
                self._apply_paused_setting(old.get(name), new[name])
                if self._aps is not None:
                    self._add_job(self._aps, new[name], paused=name in self._paused)
            self._entries = {name: new[name] if name in changed else old[name] for name in new}
        log.info(
            "schedules reconfigured: added or changed %s, removed %s",
            ", ".join(changed) or "none",
            ", ".join(removed) or "none",
        )

    def _apply_paused_setting(self, old: _Entry | None, new: _Entry) -> None:
        if old is not None and old.settings.paused == new.settings.paused:
            return  # keep the run-time state
        if new.settings.paused:
            self._paused.add(new.name)
        else:
            self._paused.discard(new.name)

    def _add_job(self, aps: Any, entry: _Entry, *, paused: bool) -> None:
        grace = max(1, int(entry.settings.misfire_grace.total_seconds()))
        # next_run_time=None is how APScheduler adds a job paused.
        extra: dict[str, Any] = {"next_run_time": None} if paused else {}
        aps.add_job(
            self._on_due,
            trigger=entry.trigger,
            args=[entry.name],
            id=entry.name,
            name=f"schedule {entry.name}",
            misfire_grace_time=grace,
            coalesce=True,
            max_instances=1,
            replace_existing=True,
            **extra,
        )

    # ------------------------------------------------------------- pause, resume, fire

    def pause(self, name: str) -> None:
        """Stop firing ``name`` until :meth:`resume` (fires due meanwhile are skipped)."""
        with self._lock:
            self._require(name)
            self._paused.add(name)
            if self._aps is not None:
                self._aps.pause_job(name)
        log.info("schedule %s paused", name)

    def resume(self, name: str) -> None:
        """Fire ``name`` on schedule again, from its next fire time on."""
        with self._lock:
            self._require(name)
            self._paused.discard(name)
            if self._aps is not None:
                self._aps.resume_job(name)
        log.info("schedule %s resumed", name)

    def fire(self, name: str) -> str:
        """Fire ``name`` now (paused or not), with the clock's time to the second as fire
        time; returns the outcome. Two fires within one second are one fire."""
        entry = self._require(name)
        fire_time = self.clock().replace(microsecond=0)
        log.info("schedule %s fired by request", name)
        return self._fire(entry, fire_time).outcome

    def launch_claimed(self, name: str, fire_time: datetime) -> FireResult:
        """Start the job of a fire already claimed in the repository (taken over from a
        node that died between claiming it and starting its job)."""
        entry = self._require(name)
        return self._finish(
            self._launch(entry, fire_time.astimezone(entry.timezone)), recorded=True
        )

    def _require(self, name: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise NoSuchSchedule(f"no schedule named {name!r}")
        return entry

    # ---------------------------------------------------------------------- catch-up

    def catch_up(self) -> list[FireResult]:
        """Fire what each schedule with ``catch_up`` other than ``none`` (and not paused)
        missed between its newest recorded fire and now. A schedule that never fired
        catches up nothing. ``start()`` calls this."""
        results: list[FireResult] = []
        with self._lock:
            entries = [e for e in self._entries.values() if e.name not in self._paused]
        for entry in entries:
            if entry.settings.catch_up == "none":
                continue
            missed = self.missed_fire_times(entry.name)
            if entry.settings.catch_up == "latest":
                missed = missed[-1:]
            if missed:
                log.info(
                    "schedule %s: catching up %d missed fire(s) (%s)",
                    entry.name,
                    len(missed),
                    entry.settings.catch_up,
                )
            results.extend(self._fire(entry, fire_time) for fire_time in missed)
        return results

    def missed_fire_times(self, name: str) -> list[datetime]:
        """The fire times of ``name`` after its newest recorded fire, up to the clock's now
        (the newest :data:`CATCH_UP_LIMIT` of them), oldest first."""
        entry = self._require(name)
        last = self.store.last_fire(name)
        now = self.clock()
        if last is None or last >= now:
            return []
        missed: deque[datetime] = deque(maxlen=CATCH_UP_LIMIT)
        previous, found = last, 0
        for _ in range(_CATCH_UP_SCAN_LIMIT):
            following: datetime | None = entry.nominal.get_next_fire_time(previous, now)
            if following is None or following > now or following <= previous:
                break
            missed.append(following)
            previous, found = following, found + 1
        else:
            log.warning(
                "schedule %s: more than %d fires since %s; catch-up looks no further than %s",
                name,
                _CATCH_UP_SCAN_LIMIT,
                last.isoformat(),
                previous.isoformat(),
            )
        if found > CATCH_UP_LIMIT:
            log.warning(
                "schedule %s missed %d fires since %s: only the newest %d are caught up",
                name,
                found,
                last.isoformat(),
                CATCH_UP_LIMIT,
            )
        return list(missed)

    # -------------------------------------------------------------------------- firing

    def _on_due(self, name: str, *, scheduled: datetime | None = None) -> None:
        """APScheduler's job: ``scheduled`` is the (jittered) time it was due, given by
        :class:`_FireExecutor` (optional only because APScheduler checks the signature
        before any executor is involved)."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            return  # removed by a reconfigure while this fire was on its way
        due = scheduled if scheduled is not None else datetime.now(UTC).replace(microsecond=0)
        self._fire(entry, self._nominal_time(entry, due))

    def _nominal_time(self, entry: _Entry, scheduled: datetime) -> datetime:
        """The un-jittered fire time of a run APScheduler delayed by up to ``jitter``: the
        latest nominal fire time not after it, so a fire is named the same whatever its
        random delay. (APScheduler 3 adds an interval's jitter to the next interval too, so
        interval runs drift off their grid: they look back a whole interval.)"""
        jitter = entry.settings.jitter
        if not jitter:
            return scheduled
        lookback = jitter + (entry.settings.interval or timedelta(0))
        nominal = scheduled
        candidate = entry.nominal.get_next_fire_time(None, scheduled - lookback)
        while candidate is not None and candidate <= scheduled:
            nominal = candidate
            candidate = entry.nominal.get_next_fire_time(candidate, scheduled)
        return nominal

    def _on_missed(self, event: Any) -> None:
        """APScheduler dropped a fire that came later than ``misfire_grace``."""
        log.warning(
            "schedule %s: fire due at %s missed (more than misfire_grace late)",
            event.job_id,
            _iso(event.scheduled_run_time),
        )
        self._count(event.job_id, "missed")

    def _fire(self, entry: _Entry, fire_time: datetime) -> FireResult:
        """Claim the fire, start the job, record the outcome. Never raises."""
        fire_time = fire_time.astimezone(entry.timezone)
        try:
            claimed = self.store.record_fire(entry.name, fire_time)
        except Exception as error:
            return self._finish(
                FireResult(entry.name, fire_time, "error", message=str(error), error=error),
                recorded=False,
            )
        if not claimed:
            result = self._taken(entry, fire_time)
            return self._finish(result, recorded=False)
        return self._finish(self._launch(entry, fire_time), recorded=True)

    def _taken(self, entry: _Entry, fire_time: datetime) -> FireResult:
        """A fire recorded before: by another node sharing the repository (``elsewhere``),
        or by this one (``duplicate``)."""
        try:
            node = self.store.fire_node(entry.name, fire_time)
        except Exception:
            node = None
        if node is not None and node != self.store.node:
            return FireResult(entry.name, fire_time, "elsewhere", message=f"taken by node {node}")
        return FireResult(entry.name, fire_time, "duplicate", message="fired before")

    def _launch(self, entry: _Entry, fire_time: datetime) -> FireResult:
        """Render the parameters and start the job; the outcome, whatever happens."""
        name = entry.name
        params: dict[str, Any] | None = None
        try:
            params = render_params(entry.settings.params, self._variables(entry, fire_time))
            execution = self.operator.start_async(entry.settings.job, params)
        except (TemplateError, InvalidJobParameters) as error:
            return FireResult(name, fire_time, "invalid", params, message=str(error))
        except JobInstanceAlreadyComplete as error:
            return FireResult(name, fire_time, "complete", params, message=str(error))
        except JobExecutionAlreadyRunning as error:
            return FireResult(name, fire_time, "running", params, message=str(error))
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            return FireResult(name, fire_time, "error", params, message=message, error=error)
        return FireResult(name, fire_time, "started", params, execution_id=execution.id)

    @staticmethod
    def _variables(entry: _Entry, fire_time: datetime) -> dict[str, Any]:
        fire_date: date = fire_time.date()
        return {"fire_time": fire_time, "fire_date": fire_date, "schedule": entry.name}

    def _finish(self, result: FireResult, *, recorded: bool) -> FireResult:
        if recorded:
            try:
                self.store.set_fire_outcome(
                    result.schedule,
                    result.fire_time,
                    result.outcome,
                    result.execution_id,
                    result.message,
                )
            except Exception:
                log.exception("schedule %s: cannot record the fire's outcome", result.schedule)
        self._log(result)
        with self._lock:
            self._last[result.schedule] = result
        self._count(result.schedule, result.outcome)
        return result

    @staticmethod
    def _log(result: FireResult) -> None:
        detail = (
            f" execution {result.execution_id}"
            if result.execution_id is not None
            else f": {result.message}"
            if result.message
            else ""
        )
        level = {"invalid": logging.WARNING, "error": logging.ERROR}.get(
            result.outcome, logging.INFO
        )
        log.log(
            level,
            "schedule %s fire %s params %s: %s%s",
            result.schedule,
            result.fire_time.isoformat(),
            _json(result.params),
            result.outcome,
            detail,
            exc_info=result.error,
        )

    def _count(self, name: str, outcome: str) -> None:
        with self._lock:
            self._counts[(name, outcome)] += 1
        hook = getattr(self.listener, "on_schedule_fire", None)
        if callable(hook):
            try:
                hook(name, outcome)
            except Exception:
                log.exception("schedule listener failed in on_schedule_fire")

    # ---------------------------------------------------------------------- inspecting

    def fire_counts(self) -> dict[tuple[str, str], int]:
        """Fires by (schedule, outcome) since this scheduler was created."""
        with self._lock:
            return dict(self._counts)

    def last_result(self, name: str) -> FireResult | None:
        """The newest fire of ``name`` in this process, or None."""
        self._require(name)
        with self._lock:
            return self._last.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def next_fire_times(self) -> dict[str, datetime | None]:
        """Each schedule's next fire time (aware UTC), None when paused."""
        with self._lock:
            entries = list(self._entries.values())
            paused = set(self._paused)
            aps = self._aps
        return {
            entry.name: None if entry.name in paused else self._next_fire_time(aps, entry)
            for entry in entries
        }

    def _next_fire_time(self, aps: Any, entry: _Entry) -> datetime | None:
        if aps is None:  # not started: when it would fire next
            following: datetime | None = entry.nominal.get_next_fire_time(None, self.clock())
        else:
            job = aps.get_job(entry.name)
            following = job.next_run_time if job is not None else None
        return following.astimezone(UTC) if following is not None else None

    def describe(self) -> list[dict[str, Any]]:
        """One dict per schedule: ``name, job, trigger, timezone, catch_up, paused,
        next_fire_time, last_fire`` (times ISO 8601 UTC or None), ``last_outcome`` (of this
        process, or None)."""
        next_times = self.next_fire_times()
        with self._lock:
            entries = list(self._entries.values())
            paused = set(self._paused)
            last = dict(self._last)
        return [
            {
                "name": entry.name,
                "job": entry.settings.job,
                "trigger": describe_trigger(entry.settings),
                "timezone": str(entry.timezone),
                "catch_up": entry.settings.catch_up,
                "paused": entry.name in paused,
                "next_fire_time": _iso(next_times.get(entry.name)),
                "last_fire": _iso(self.store.last_fire(entry.name)),
                "last_outcome": last[entry.name].outcome if entry.name in last else None,
            }
            for entry in entries
        ]


__all__ = [
    "CATCH_UP_LIMIT",
    "OUTCOMES",
    "SCHEDULE_VARIABLES",
    "FireResult",
    "NoSuchSchedule",
    "Scheduler",
    "build_trigger",
    "crontab_day_of_week",
    "describe_trigger",
    "validate_schedule",
]
