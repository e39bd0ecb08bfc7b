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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MISSED
from apscheduler.schedulers.background import BackgroundScheduler

from batchd import failpoints
from batchd.daemon.calendars import Calendar, NoSuchCalendar, build_calendar
from batchd.daemon.dependencies import FireWatch
from batchd.daemon.schedule_entries import (
    CATCH_UP_LIMIT,
    OUTCOMES,
    SCHEDULE_VARIABLES,
    FireResult,
    ScheduleEntry,
    fire_plan,
    iso,
    log_result,
    make_entry,
    missed_fire_times,
    nominal_time,
    render,
)
from batchd.daemon.schedule_triggers import (
    FireExecutor,
    build_trigger,
    describe_trigger,
    validate_schedule,
)
from batchd.daemon.settings import CalendarSettings, ScheduleSettings
from batchd.daemon.templates import TemplateError
from batchd.engine import JobOperator
from batchd.engine.listeners import notify
from batchd.errors import (
    InvalidJobParameters,
    JobExecutionAlreadyRunning,
    JobInstanceAlreadyComplete,
)
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

AFTER_FIRE_RECORD = failpoints.declare(
    "scheduler.after_fire_record",
    "a fire is claimed but its job not started; the claim goes stale a lease later and a "
    "recovering node takes it over and starts the job once (catch-up starts after it)",
)
AFTER_JOB_START = failpoints.declare(
    "scheduler.after_job_start",
    "a fire's execution exists but the fire's row does not name it; recovery FAILs the "
    "execution (its process is gone), then the stale claim is taken over and the instance "
    "restarted from it",
)
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
        calendars: Iterable[CalendarSettings] = (),
    ) -> None:
        self.operator = operator
        self.store = store
        self.timezone = timezone
        self.clock = clock
        self.listener = listener
        self._lock = threading.RLock()
        self._calendars = {c.name: build_calendar(c) for c in calendars}
        self._entries = self._build_entries(schedules, self._calendars)
        # Waiting fires and deadlines; woken by completions this operator sees.
        self.watch = FireWatch(store, self, clock, listener)
        operator.add_observer(self.watch)
        self._paused = {name for name, entry in self._entries.items() if entry.settings.paused}
        self._last: dict[str, FireResult] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
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
        entry = self._require(name)
        if params is None:
            recorded = self.store.recorded_fire(name, fire_time)
            params = recorded.params if recorded is not None else None
        local = fire_time.astimezone(entry.timezone)
        return self._finish(self._launch(entry, local, params), recorded=True)

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
        taken = self._taken(fire.schedule, fire.fire_time)
        message = f"what it waited for has completed; {taken.message}"
        self._finish(replace(taken, params=fire.params, message=message), recorded=False)

    def give_up(self, fire: RecordedFire, message: str) -> None:
        result = FireResult(
            fire.schedule, fire.fire_time, "dependency_timeout", fire.params, message=message
        )
        self._finish(result, recorded=True)

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
        self._count(event.job_id, "missed")

    def _fire(
        self, entry: ScheduleEntry, fire_time: datetime, *, requested: bool = False
    ) -> FireResult:
        """Claim the fire, start the job (or record it waiting for its ``after`` jobs),
        record the outcome. Never raises. A fire on a closing day of the schedule's
        calendar runs nothing, unless an operator ``requested`` it."""
        fire_time = fire_time.astimezone(entry.timezone)
        closed = entry.closed_because(fire_time)
        day = entry.business_date(fire_time).isoformat()
        if closed is not None and not requested:
            message = (
                f"{day} is not a business day of calendar {entry.settings.calendar} ({closed})"
            )
            return self._finish(
                FireResult(entry.name, fire_time, "closed", message=message), recorded=False
            )
        # Said in the log, in the fire's outcome and in the answer to ``ctl fire``.
        note = None
        if closed is not None:
            note = (
                f"{day} is not a business day of calendar {entry.settings.calendar} "
                f"({closed}): run as asked"
            )
            log.warning("schedule %s fired by request: %s", entry.name, note)
        plan = fire_plan(entry, fire_time)
        try:
            claimed = self.store.record_fire(entry.name, fire_time, business_date=day, **plan)
        except Exception as error:
            return self._finish(
                FireResult(entry.name, fire_time, "error", message=str(error), error=error),
                recorded=False,
            )
        if not claimed:
            result = self._taken(entry.name, fire_time)
            return self._finish(result, recorded=False)
        if plan.get("waits_for"):
            # Not "claimed": whichever node sees its dependencies complete claims it.
            self.watch.wake()
            waiting = FireResult(entry.name, fire_time, "waiting", plan["params"], message=note)
            return self._finish(waiting, recorded=False)
        failpoints.failpoint(AFTER_FIRE_RECORD)
        launched = self._launch(entry, fire_time, plan["params"])
        if note is not None:
            message = note if launched.message is None else f"{note}; {launched.message}"
            launched = replace(launched, message=message)
        return self._finish(launched, recorded=True)

    def _taken(self, name: str, fire_time: datetime) -> FireResult:
        """A fire recorded before: by another node sharing the repository (``elsewhere``),
        or by this one (``duplicate``)."""
        try:
            node = self.store.fire_node(name, fire_time)
        except Exception:
            node = None
        if node is not None and node != self.store.node:
            return FireResult(name, fire_time, "elsewhere", message=f"taken by node {node}")
        return FireResult(name, fire_time, "duplicate", message="fired before")

    def _launch(
        self, entry: ScheduleEntry, fire_time: datetime, params: dict[str, Any] | None = None
    ) -> FireResult:
        """Start the job with ``params`` (rendered here when None); the outcome, whatever
        happens."""
        name = entry.name
        try:
            if params is None:
                params = render(entry, entry.settings.params, fire_time)
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
        failpoints.failpoint(AFTER_JOB_START)
        return FireResult(name, fire_time, "started", params, execution_id=execution.id)

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
        log_result(result)
        with self._lock:
            self._last[result.schedule] = result
        self._count(result.schedule, result.outcome)
        return result

    def _count(self, name: str, outcome: str) -> None:
        with self._lock:
            self._counts[(name, outcome)] += 1
        notify(self.listener, "on_schedule_fire", name, outcome)

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
            last = dict(self._last)
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
