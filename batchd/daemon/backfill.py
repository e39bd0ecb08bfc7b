"""Backfills: a job run once for each date of a span, as one unit the daemon can stop.

A backfill is planned first (which dates run; which are skipped because their instance
COMPLETED, was ABANDONED or is running), then run on its own thread, at most
``max_concurrent`` dates at a time. It has an id for as long as the daemon that runs it
lives. It stops as a whole: stopping it (by its id, or by stopping its job on this daemon)
starts no further date and asks its running dates to stop; a date of it that ends STOPPED
(stopped by execution id, or from another node) also ends it. Dates never started are
reported as such, with the reason, never silently dropped.

Backfills are not durable: a daemon that is killed leaves its running dates to crash
recovery and starts none of the others; running the same backfill again starts exactly the
dates that did not complete (completed ones are skipped).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from batchd.daemon.calendars import Calendar
from batchd.engine import JobOperator
from batchd.errors import NoSuchBackfill as NoSuchBackfill
from batchd.model import BatchStatus, JobExecution

log = logging.getLogger(__name__)

_KEPT = 100  # ended backfills remembered (for stop and, later, listing)

RUNNING = "running"
STOPPED = "stopped"  # stopped by request: no further date started
DONE = "done"  # every planned date was started (or could not be) and has ended
INTERRUPTED = "interrupted"  # the daemon shut down


@dataclass
class BackfillDate:
    """One date of a backfill: left until started; running until its execution ends."""

    date: str
    values: dict[str, Any]
    execution_id: int | None = None
    status: str | None = None  # the execution's status once it has ended
    not_started: str | None = None  # why it was never started


@dataclass(frozen=True)
class Span:
    """What a backfill covers: ``job`` run once for each date from ``first`` to ``last``,
    the date (ISO) in its parameter ``param``, beside the fixed ``params``."""

    job: str
    first: date
    last: date
    param: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """Which dates of a span run (with their parameters), and which are skipped."""

    span: Span
    to_run: list[BackfillDate]
    skipped: list[dict[str, Any]]


def plan_backfill(operator: JobOperator, span: Span, calendar: Calendar | None = None) -> Plan:
    """The dates of ``span`` whose instance has not COMPLETED, was not ABANDONED and is not
    running; with a ``calendar``, its business days only (the others are skipped with
    status ``CLOSED`` and the reason). InvalidJobParameters (nothing runs) for a bad date
    value."""
    job, first, last, param, params = span.job, span.first, span.last, span.param, span.params
    repository = operator.repository
    definition = operator.registry.get(job)
    to_run: list[BackfillDate] = []
    skipped: list[dict[str, Any]] = []
    for offset in range((last - first).days + 1):
        day = (first + timedelta(days=offset)).isoformat()
        closed = calendar.closed_because(first + timedelta(days=offset)) if calendar else None
        if closed is not None:
            skipped.append({"date": day, "status": "CLOSED", "reason": closed})
            continue
        values = {**params, param: day}
        key = definition.parameters(values).job_key
        instance = repository.find_instance(job, key)
        previous = (
            repository.last_execution_of_instance(instance.id) if instance is not None else None
        )
        if previous is not None and (
            previous.status in (BatchStatus.COMPLETED, BatchStatus.ABANDONED)
            or previous.status.is_running
        ):
            status = previous.status.value
            skipped.append({"date": day, "status": status, "execution_id": previous.id})
        else:
            to_run.append(BackfillDate(day, values))
    return Plan(span, to_run, skipped)


@dataclass
class Backfill:
    """One running (or ended) backfill. Its dates change under ``_lock`` only; a date is
    started with the lock held, so once :meth:`halt` has returned no date starts."""

    id: int
    job: str
    param: str
    first: date
    last: date
    max_concurrent: int
    dates: list[BackfillDate]
    state: str = RUNNING
    why: str | None = None  # why it stopped, when it did
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def run(self, operator: JobOperator) -> None:
        """Start the dates in order, ``max_concurrent`` at a time, until all have ended or
        the backfill is halted; then log its summary."""
        log.info(
            "backfill %d of %s: %d dates, %d at a time",
            self.id,
            self.job,
            len(self.dates),
            self.max_concurrent,
        )
        with self._lock:
            for item in self.dates:
                while self._running() >= self.max_concurrent and self.state == RUNNING:
                    self._lock.wait()
                if self.state != RUNNING:
                    break
                try:
                    item.execution_id = operator.start_async(self.job, item.values).id
                except Exception as problem:  # e.g. started by someone else meanwhile
                    item.not_started = f"{type(problem).__name__}: {problem}"
                    log.warning("backfill %d: %s not started: %s", self.id, item.date, problem)
            for item in self.dates:
                if item.execution_id is None and item.not_started is None:
                    item.not_started = f"backfill {self.state}: {self.why}"
            while self._running() and self.state != INTERRUPTED:
                self._lock.wait()
            if self.state == RUNNING:
                self.state = DONE
            log.info("backfill %d of %s %s: %s", self.id, self.job, self.state, self.summary())

    def _running(self) -> int:
        return sum(1 for item in self.dates if item.execution_id is not None and not item.status)

    def halt(self, state: str, why: str) -> list[int]:
        """Start no further date; returns the executions still running when this call
        halted it (for the caller to stop, when stopping), else []. Halting an ended or
        halted backfill changes nothing (but shutdown no longer waits for stopping dates)."""
        with self._lock:
            self._lock.notify_all()
            if self.state != RUNNING:
                if state == INTERRUPTED and self.state == STOPPED:
                    self.state = INTERRUPTED
                return []
            self.state, self.why = state, why
            log.info("backfill %d of %s %s: %s", self.id, self.job, state, why)
            return [
                item.execution_id
                for item in self.dates
                if item.execution_id is not None and not item.status
            ]

    def ended(self, execution: JobExecution) -> list[int] | None:
        """Note that one of this backfill's executions ended (None if it is not one).
        A date that ended STOPPED stops the backfill as a whole: returns its other running
        executions, to be asked to stop too."""
        with self._lock:
            item = next((i for i in self.dates if i.execution_id == execution.id), None)
            if item is None:
                return None
            item.status = execution.status.value
            self._lock.notify_all()
            if execution.status != BatchStatus.STOPPED:
                return []
            # Under the same lock hold as the status: the freed slot starts no date.
            return self.halt(STOPPED, f"its execution {execution.id} ({item.date}) was STOPPED")

    def summary(self) -> str:
        """``3 COMPLETED, 1 STOPPED, 2 never started`` and the like."""
        counts: dict[str, int] = {}
        with self._lock:
            for item in self.dates:
                if item.not_started is not None:
                    key = "never started"
                elif item.execution_id is None:
                    key = "left"
                else:
                    key = item.status or "running"
                counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{n} {key}" for key, n in counts.items()) or "no dates"

    def view(self) -> dict[str, Any]:
        """Its state and its dates: done (with their status), running, left (not yet
        started) and never started (with the reason)."""
        with self._lock:
            return {
                "backfill": self.id,
                "job": self.job,
                "param": self.param,
                "from": self.first.isoformat(),
                "to": self.last.isoformat(),
                "max_concurrent": self.max_concurrent,
                "state": self.state,
                "why": self.why,
                "summary": self.summary(),
                "done": [
                    {"date": i.date, "execution_id": i.execution_id, "status": i.status}
                    for i in self.dates
                    if i.status
                ],
                "running": [
                    {"date": i.date, "execution_id": i.execution_id}
                    for i in self.dates
                    if i.execution_id is not None and not i.status
                ],
                "left": [
                    i.date for i in self.dates if i.execution_id is None and i.not_started is None
                ],
                "not_started": [
                    {"date": i.date, "reason": i.not_started}
                    for i in self.dates
                    if i.not_started is not None
                ],
            }


class Backfills:
    """The backfills of one daemon: started, stopped, and told when executions end (it is
    an observer of the operator)."""

    def __init__(self, operator: JobOperator) -> None:
        self.operator = operator
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._backfills: OrderedDict[int, Backfill] = OrderedDict()
        operator.add_observer(self)

    def start(self, plan: Plan, max_concurrent: int) -> Backfill:
        """Run the planned dates on a thread of their own; returns at once."""
        span = plan.span
        with self._lock:
            backfill = Backfill(
                next(self._ids),
                span.job,
                span.param,
                span.first,
                span.last,
                max_concurrent,
                plan.to_run,
            )
            self._backfills[backfill.id] = backfill
            ended = [b for b in self._backfills.values() if b.state != RUNNING]
            for old in ended[: max(0, len(ended) - _KEPT)]:
                del self._backfills[old.id]
        threading.Thread(
            target=backfill.run,
            args=(self.operator,),
            name=f"batchd-backfill-{backfill.id}",
            daemon=True,
        ).start()
        return backfill

    def plan(self, span: Span, calendar: Calendar | None = None) -> Plan:
        """:func:`plan_backfill` on this daemon's operator."""
        return plan_backfill(self.operator, span, calendar)

    def get(self, backfill_id: int) -> Backfill:
        with self._lock:
            backfill = self._backfills.get(backfill_id)
        if backfill is None:
            raise NoSuchBackfill(
                f"no backfill {backfill_id} on this daemon (a backfill lives as long as the "
                "daemon that runs it)"
            )
        return backfill

    def all(self) -> list[Backfill]:
        with self._lock:
            return list(self._backfills.values())

    def stop(self, backfill: Backfill, why: str) -> list[JobExecution]:
        """Halt ``backfill`` and ask its running dates to stop; returns those asked."""
        asked: list[JobExecution] = []
        for execution_id in backfill.halt(STOPPED, why):
            asked += self.operator.stop(execution_id)
        return asked

    def of_job(self, job: str) -> list[Backfill]:
        return [b for b in self.all() if b.job == job and b.state == RUNNING]

    def on_execution_ended(self, execution: JobExecution) -> None:
        for backfill in self.all():
            others = backfill.ended(execution)
            if others is not None:
                for execution_id in others:
                    self.operator.stop(execution_id)
                return

    def close(self) -> None:
        """The daemon is shutting down: no backfill starts another date (the daemon stops
        the running ones itself)."""
        for backfill in self.all():
            backfill.halt(INTERRUPTED, "the daemon shut down")


__all__ = [
    "Backfill",
    "BackfillDate",
    "Backfills",
    "NoSuchBackfill",
    "Plan",
    "Span",
    "plan_backfill",
]
