"""Schedules: cron and interval triggers, fired by APScheduler 3.x (which only this module and
:mod:`batchd.daemon.schedule_triggers` import).

A schedule fires its job with parameters rendered from the fire time (``fire_time``,
``fire_date``, ``schedule``; see :mod:`batchd.daemon.templates`). Every fire is first claimed
in the repository (:class:`~batchd.repository.TriggerStore`), so a fire time runs at most once
across daemon restarts and across daemons sharing the database; fires missed while the daemon
was down are caught up from the newest recorded fire.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MISSED
from apscheduler.schedulers.background import BackgroundScheduler

from batchd import failpoints
from batchd.daemon.calendars import Calendar, NoSuchCalendar, build_calendar
from batchd.daemon.dependencies import FireWatch
from batchd.daemon.fires import Fires
from batchd.daemon.schedule_entries import (
    CATCH_UP_LIMIT,
    OUTCOMES,
    SCHEDULE_VARIABLES,
    FireResult,
    ScheduleEntry,
    iso,
    make_entry,
    missed_fire_times,
    nominal_time,
)
from batchd.daemon.schedule_triggers import (
    FireExecutor,
    build_trigger,
    describe_trigger,
    validate_schedule,
)
from batchd.daemon.settings import CalendarSettings, ScheduleSettings
from batchd.engine import JobOperator
from batchd.errors import NoSuchSchedule as NoSuchSchedule
from batchd.repository import TriggerStore, utc_now
from batchd.repository.triggers import RecordedFire

_T = TypeVar("_T")
log = logging.getLogger(__name__)

# "Strictly before" APScheduler's first fire of a schedule.
_TICK = timedelta(microseconds=1)
# Threads that turn APScheduler's fires into job starts (a start only creates the execution;
# the job itself runs on the operator's pool).
_FIRE_THREADS = 4

AFTER_CATCH_UP_FIRE = failpoints.declare(
    "scheduler.after_catch_up_fire",
    "a caught-up fire is recorded and started, the next missed one not yet claimed; the "
    "restarted daemon catches up from the newest recorded fire",
)


# ------------------------------------------------------------------------------ scheduler


class Scheduler:
    """Fires the jobs of the configured schedules through a :class:`JobOperator`.

    ``start()`` first catches up the fires each schedule missed since its newest recorded
    fire (``catch_up``: ``none``, only the ``latest``, or ``all`` of them in order, each its
    own instance), then hands the schedules to an APScheduler ``BackgroundScheduler`` (one
    job each; ``misfire_grace``, coalescing, one run at a time). A fire is claimed in the
    ``store`` before anything starts (:class:`~batchd.daemon.fires.Fires`): a fire time
    that was claimed before starts nothing and is ``"elsewhere"`` (another node sharing the
    repository claimed it) or a ``"duplicate"``. A fire never raises: a job whose instance
    already completed or is running, bad parameters and unexpected errors are logged and
    counted.

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
        calendars: Iterable[CalendarSettings] = (),
    ) -> None:
        self.store = store
        self.timezone = timezone
        self.clock = clock
        self._lock = threading.RLock()
        self._calendars = {c.name: build_calendar(c) for c in calendars}
        self._entries = self._build_entries(schedules, self._calendars)
        # Waiting fires and deadlines; woken by completions this operator sees.
        self.watch = FireWatch(store, self, clock, listener)
        operator.add_observer(self.watch)
        # Claiming, starting, recording and counting each fire.
        self.fires = Fires(operator, store, wake_waiting=self.watch.wake, listener=listener)
        self._paused = {name for name, entry in self._entries.items() if entry.settings.paused}
        self._aps: Any = None  # the BackgroundScheduler while started

    def _build_entries(
        self, schedules: Iterable[ScheduleSettings], calendars: dict[str, Calendar]
    ) -> dict[str, ScheduleEntry]:
        entries: dict[str, ScheduleEntry] = {}
        for settings in schedules:
            if settings.name in entries:
                raise ValueError(f"two schedules are named {settings.name!r}")
            entries[settings.name] = make_entry(settings, self.timezone, calendars)
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
                executors={"default": FireExecutor(_FIRE_THREADS)},
            )
            aps.add_listener(self._on_missed, EVENT_JOB_MISSED)
            for entry in self._entries.values():
                self._add_job(aps, entry, paused=entry.name in self._paused)
            aps.start()
            self._aps = aps
            # Catching up takes time, and APScheduler fires from its own start on: what
            # came due in between (up to a schedule's ``end``, maybe) is caught up now.
            self._catch_up(lambda entry: self._first_live_fire(aps, entry), "came due")
            self.watch.start()
        log.info("scheduler started with %d schedules", len(self._entries))

    def shutdown(self) -> None:
        """Stop firing (a fire in progress finishes; running jobs are not touched)."""
        with self._lock:
            aps, self._aps = self._aps, None
        if aps is not None:
            aps.shutdown(wait=True)
            self.watch.stop()
            log.info("scheduler stopped")

    def threads(self) -> list[threading.Thread]:
        """APScheduler's thread, while started: every schedule fires from it."""
        with self._lock:
            thread: threading.Thread | None = getattr(self._aps, "_thread", None)
        return [t for t in (thread, self.watch.thread) if t is not None]

    def reconfigure(
        self,
        schedules: Iterable[ScheduleSettings],
        calendars: Iterable[CalendarSettings] | None = None,
    ) -> None:
        """Apply a new list of schedules (SIGHUP): add new ones, remove those that are gone,
        replace those whose settings changed. Unchanged schedules, running jobs and fires in
        progress are not touched. A pause or resume made at run time survives unless the
        schedule's ``paused`` setting itself changed. ValueError (before anything changes)
        if a schedule is bad. ``calendars`` (when given) replace the calendars, and every
        schedule that has one is rebuilt with the new one."""
        new_calendars = (
            {c.name: build_calendar(c) for c in calendars}
            if calendars is not None
            else self._calendars
        )
        new = self._build_entries(schedules, new_calendars)
        with self._lock:
            self._calendars = new_calendars
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
            # Unchanged schedules keep their APScheduler job; their entry is the new one,
            # which holds the reloaded calendar.
            self._entries = new
        log.info(
            "schedules reconfigured: added or changed %s, removed %s",
            ", ".join(changed) or "none",
            ", ".join(removed) or "none",
        )

    def _apply_paused_setting(self, old: ScheduleEntry | None, new: ScheduleEntry) -> None:
        if old is not None and old.settings.paused == new.settings.paused:
            return  # keep the run-time state
        if new.settings.paused:
            self._paused.add(new.name)
        else:
            self._paused.discard(new.name)

    def _add_job(self, aps: Any, entry: ScheduleEntry, *, paused: bool) -> None:
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
        self._set_paused(name, True)

    def resume(self, name: str) -> None:
        """Fire ``name`` on schedule again, from its next fire time on."""
        self._set_paused(name, False)

    def _set_paused(self, name: str, paused: bool) -> None:
        with self._lock:
            self._require(name)
            if paused:
                self._paused.add(name)
            else:
                self._paused.discard(name)
            if self._aps is not None:
                (self._aps.pause_job if paused else self._aps.resume_job)(name)
        log.info("schedule %s %s", name, "paused" if paused else "resumed")

    def fire(self, name: str) -> str:
        """Fire ``name`` now (paused or not), with the clock's time to the second as fire
        time; returns the outcome. Two fires within one second are one fire."""
        entry = self._require(name)
        fire_time = self.clock().replace(microsecond=0)
        log.info("schedule %s fired by request", name)
        return self._fire(entry, fire_time, requested=True).outcome

    def launch_claimed(
        self, name: str, fire_time: datetime, params: dict[str, Any] | None = None
    ) -> FireResult:
        """Start the job of a fire already claimed in the repository (taken over from a
        node that died between claiming it and starting its job, or a waiting fire this
        node claimed), with the parameters recorded with the fire when there are some."""
        return self.fires.launch_claimed(self._require(name), fire_time, params)

    def calendar(self, name: str) -> Calendar:
        """The configured calendar ``name``; NoSuchCalendar if there is none."""
        return self._named(self._calendars, name, NoSuchCalendar, "calendar")

    # ----------------------------------------------- waiting fires (see FireWatch)

    def job_of(self, name: str) -> str | None:
        with self._lock:
            entry = self._entries.get(name)
        return entry.settings.job if entry is not None else None

    def deadline_schedules(self) -> list[str]:
        with self._lock:
            return [e.name for e in self._entries.values() if e.settings.deadline is not None]

    def start_waited(self, fire: RecordedFire) -> None:
        log.info(
            "schedule %s fire %s: what it waited for has completed",
            fire.schedule,
            fire.fire_time.isoformat(),
        )
        self.launch_claimed(fire.schedule, fire.fire_time, fire.params)

    def taken_elsewhere(self, fire: RecordedFire) -> None:
        self.fires.taken_elsewhere(fire)

    def give_up(self, fire: RecordedFire, message: str) -> None:
        self.fires.give_up(fire, message)

    def _require(self, name: str) -> ScheduleEntry:
        return self._named(self._entries, name, NoSuchSchedule, "schedule")

    def _named(self, table: Mapping[str, _T], name: str, missing: type[Exception], what: str) -> _T:
        with self._lock:
            found = table.get(name)
        if found is None:
            raise missing(f"no {what} named {name!r}")
        return found

    # ---------------------------------------------------------------------- catch-up

    def catch_up(self) -> list[FireResult]:
        """Fire what each schedule with ``catch_up`` other than ``none`` (and not paused)
        missed between its newest recorded fire and now (fire times on closing days of its
        calendar are not missed). A schedule that never fired catches up nothing, unless it
        has ``catch_up = "all"`` and a ``start``: then it catches up from its start.
        ``start()`` calls this, and again once APScheduler runs, for the fires that came due
        while it caught up (before the first fire APScheduler runs)."""
        return self._catch_up(lambda entry: None, "missed")

    def _catch_up(
        self, live_from: Callable[[ScheduleEntry], datetime | None], what: str
    ) -> list[FireResult]:
        """Catch up each schedule's fires up to the clock's now, or up to just before
        ``live_from(entry)``, the first fire time APScheduler will fire, when that is sooner."""
        results: list[FireResult] = []
        with self._lock:
            entries = [e for e in self._entries.values() if e.name not in self._paused]
        for entry in entries:
            if entry.settings.catch_up == "none":
                continue
            now = self.clock()
            live = live_from(entry)
            if live is not None:
                now = min(now, live - _TICK)
            missed = missed_fire_times(entry, self.store.last_fire(entry.name), now)
            if entry.settings.catch_up == "latest":
                missed = missed[-1:]
            if missed:
                log.info(
                    "schedule %s: catching up %d %s fire(s) (%s)",
                    entry.name,
                    len(missed),
                    what,
                    entry.settings.catch_up,
                )
            for fire_time in missed:
                results.append(self._fire(entry, fire_time))
                failpoints.failpoint(AFTER_CATCH_UP_FIRE)
        return results

    def missed_fire_times(self, name: str) -> list[datetime]:
        """The fire times of ``name`` (aware UTC) after its newest recorded fire (or from
        its ``start``, see :meth:`catch_up`), up to the clock's now, on its business days
        (the newest :data:`CATCH_UP_LIMIT` of them), oldest first."""
        entry = self._require(name)
        return missed_fire_times(entry, self.store.last_fire(name), self.clock())

    def _first_live_fire(self, aps: Any, entry: ScheduleEntry) -> datetime | None:
        """The nominal time of the first fire APScheduler will run of ``entry``; None when
        it will run none (the schedule's ``end`` has passed)."""
        job = aps.get_job(entry.name)
        following: datetime | None = job.next_run_time if job is not None else None
        return nominal_time(entry, following.astimezone(UTC)) if following is not None else None

    # -------------------------------------------------------------------------- firing

    def _on_due(self, name: str, *, scheduled: datetime | None = None) -> None:
        """APScheduler's job: ``scheduled`` is the (jittered) time it was due, given by
        :class:`FireExecutor` (optional only because APScheduler checks the signature
        before any executor is involved)."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            return  # removed by a reconfigure while this fire was on its way
        due = scheduled if scheduled is not None else datetime.now(UTC).replace(microsecond=0)
        self._fire(entry, nominal_time(entry, due.astimezone(UTC)))

    def _on_missed(self, event: Any) -> None:
        """APScheduler dropped a fire that came later than ``misfire_grace``."""
        log.warning(
            "schedule %s: fire due at %s missed (more than misfire_grace late)",
            event.job_id,
            iso(event.scheduled_run_time),
        )
        self.fires.count(event.job_id, "missed")

    def _fire(
        self, entry: ScheduleEntry, fire_time: datetime, *, requested: bool = False
    ) -> FireResult:
        return self.fires.fire(entry, fire_time, requested=requested)

    # ---------------------------------------------------------------------- inspecting

    def fire_counts(self) -> dict[tuple[str, str], int]:
        """Fires by (schedule, outcome) since this scheduler was created."""
        return self.fires.counts()

    def last_result(self, name: str) -> FireResult | None:
        """The newest fire of ``name`` in this process, or None."""
        self._require(name)
        return self.fires.last().get(name)

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

    def _next_fire_time(self, aps: Any, entry: ScheduleEntry) -> datetime | None:
        if aps is None:  # not started: when it would fire next
            following: datetime | None = entry.nominal.get_next_fire_time(None, self.clock())
        else:
            job = aps.get_job(entry.name)
            following = job.next_run_time if job is not None else None
        return following.astimezone(UTC) if following is not None else None

    def describe(self) -> list[dict[str, Any]]:
        """One dict per schedule: ``name, job, trigger, timezone, catch_up, paused,
        next_fire_time, last_fire`` (times ISO 8601 UTC or None), ``last_outcome`` (of this
        process, or None), ``calendar``, and ``waiting``: its fires waiting for other jobs
        (``fire_time, business_date, params, waits_for, wait_until``), from the repository."""
        next_times = self.next_fire_times()
        waiting: dict[str, list[dict[str, Any]]] = {}
        for fire in self.store.waiting_fires():
            waiting.setdefault(fire.schedule, []).append(fire.view())
        with self._lock:
            entries = list(self._entries.values())
            paused = set(self._paused)
        last = self.fires.last()
        return [
            {
                "name": entry.name,
                "job": entry.settings.job,
                "trigger": describe_trigger(entry.settings),
                "timezone": str(entry.timezone),
                "catch_up": entry.settings.catch_up,
                "paused": entry.name in paused,
                "next_fire_time": iso(next_times.get(entry.name)),
                "last_fire": iso(self.store.last_fire(entry.name)),
                "last_outcome": last[entry.name].outcome if entry.name in last else None,
                "calendar": entry.settings.calendar,
                "waiting": waiting.get(entry.name, []),
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
    "describe_trigger",
    "validate_schedule",
]
