"""One fire of a schedule, from its claim to its recorded outcome.

:class:`Fires` is the part of the scheduler that acts on a fire time once the scheduler
(APScheduler, catch-up, an operator's ``ctl fire``, a waiting fire whose dependencies
completed) has decided it is due: it claims the fire in the repository
(:class:`~batchd.repository.TriggerStore`), starts the job through the operator or records
the fire waiting for its ``after`` jobs, records the outcome, logs it and counts it. It knows
nothing of APScheduler, pausing or the configured schedules: it is handed a
:class:`~batchd.daemon.schedule_entries.ScheduleEntry` each time.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from batchd import failpoints
from batchd.daemon.schedule_entries import FireResult, ScheduleEntry, fire_plan, log_result, render
from batchd.daemon.templates import TemplateError
from batchd.engine import JobOperator
from batchd.engine.listeners import notify
from batchd.errors import (
    InvalidJobParameters,
    JobExecutionAlreadyRunning,
    JobInstanceAlreadyComplete,
)
from batchd.repository import TriggerStore
from batchd.repository.triggers import RecordedFire

log = logging.getLogger(__name__)

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


class Fires:
    """Claims, starts, records and counts the fires of schedules. No method raises: a job
    whose instance already completed or is running, bad parameters and unexpected errors
    are outcomes (:data:`~batchd.daemon.schedule_entries.OUTCOMES`), logged and counted.

    ``wake_waiting`` is called when a fire is recorded waiting for its ``after`` jobs (the
    scheduler's :class:`~batchd.daemon.dependencies.FireWatch` then looks at it);
    ``listener``, if it has ``on_schedule_fire(name, outcome)``, hears every outcome.
    """

    def __init__(
        self,
        operator: JobOperator,
        store: TriggerStore,
        *,
        wake_waiting: Callable[[], None],
        listener: object | None = None,
    ) -> None:
        self.operator = operator
        self.store = store
        self._wake_waiting = wake_waiting
        self._listener = listener
        self._lock = threading.Lock()  # guards _last and _counts
        self._last: dict[str, FireResult] = {}
        self._counts: Counter[tuple[str, str]] = Counter()

    # ------------------------------------------------------------------ firing

    def fire(
        self, entry: ScheduleEntry, fire_time: datetime, *, requested: bool = False
    ) -> FireResult:
        """Claim the fire, start the job (or record it waiting for its ``after`` jobs),
        record the outcome. A fire on a closing day of the schedule's calendar runs
        nothing, unless an operator ``requested`` it."""
        fire_time = fire_time.astimezone(entry.timezone)
        closed = entry.closed_because(fire_time)
        day = entry.business_date(fire_time).isoformat()
        if closed is not None and not requested:
            message = (
                f"{day} is not a business day of calendar {entry.settings.calendar} ({closed})"
            )
            return self.finish(
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
            return self.finish(
                FireResult(entry.name, fire_time, "error", message=str(error), error=error),
                recorded=False,
            )
        if not claimed:
            return self.finish(self._taken(entry.name, fire_time), recorded=False)
        if plan.get("waits_for"):
            # Not "claimed": whichever node sees its dependencies complete claims it.
            self._wake_waiting()
            waiting = FireResult(entry.name, fire_time, "waiting", plan["params"], message=note)
            return self.finish(waiting, recorded=False)
        failpoints.failpoint(AFTER_FIRE_RECORD)
        launched = self._launch(entry, fire_time, plan["params"])
        if note is not None:
            message = note if launched.message is None else f"{note}; {launched.message}"
            launched = replace(launched, message=message)
        return self.finish(launched, recorded=True)

    def launch_claimed(
        self, entry: ScheduleEntry, fire_time: datetime, params: dict[str, Any] | None
    ) -> FireResult:
        """Start the job of a fire already claimed in the repository, with the parameters
        recorded with the fire when there are some (rendered from ``fire_time`` when not)."""
        if params is None:
            recorded = self.store.recorded_fire(entry.name, fire_time)
            params = recorded.params if recorded is not None else None
        local = fire_time.astimezone(entry.timezone)
        return self.finish(self._launch(entry, local, params), recorded=True)

    def taken_elsewhere(self, fire: RecordedFire) -> None:
        """Log and count a waiting fire that another node claimed first."""
        taken = self._taken(fire.schedule, fire.fire_time)
        message = f"what it waited for has completed; {taken.message}"
        self.finish(replace(taken, params=fire.params, message=message), recorded=False)

    def give_up(self, fire: RecordedFire, message: str) -> None:
        """Record and count a waiting fire given up (``dependency_timeout``)."""
        result = FireResult(
            fire.schedule, fire.fire_time, "dependency_timeout", fire.params, message=message
        )
        self.finish(result, recorded=True)

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
        self, entry: ScheduleEntry, fire_time: datetime, params: dict[str, Any] | None
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

    # ------------------------------------------------------------------ outcomes

    def finish(self, result: FireResult, *, recorded: bool) -> FireResult:
        """Record the outcome on the fire's row (when this node ``recorded`` the fire),
        log it, keep it as the schedule's newest and count it."""
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
        self.count(result.schedule, result.outcome)
        return result

    def count(self, name: str, outcome: str) -> None:
        """Count an outcome (also one no fire came to: ``missed``) and tell the listener."""
        with self._lock:
            self._counts[(name, outcome)] += 1
        notify(self._listener, "on_schedule_fire", name, outcome)

    def counts(self) -> dict[tuple[str, str], int]:
        """Fires by (schedule, outcome) so far."""
        with self._lock:
            return dict(self._counts)

    def last(self) -> dict[str, FireResult]:
        """The newest fire of each schedule that fired in this process."""
        with self._lock:
            return dict(self._last)


__all__ = ["AFTER_FIRE_RECORD", "AFTER_JOB_START", "Fires"]
