"""What each control operation does: :class:`Handlers` has one method per operation of
:data:`~batchd.daemon.protocol.OPERATIONS`, named like it, taking its checked arguments and
returning its JSON result. It acts on the daemon only through
:class:`~batchd.daemon.api.DaemonControl`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

from batchd import __version__
from batchd.daemon.api import DaemonControl
from batchd.daemon.backfill import Span
from batchd.daemon.protocol import (
    BAD_REQUEST,
    DEFAULT_CALENDAR_DAYS,
    MAX_BACKFILL_DAYS,
    MAX_CALENDAR_DAYS,
    MAX_LIMIT,
    OPERATIONS,
    ProtocolError,
    execution_view,
    iso,
    node_view,
    status_change_view,
)
from batchd.model import BatchStatus, JobExecution


class Handlers:
    """The operations of the control socket, carried out on ``daemon``."""

    def __init__(self, daemon: DaemonControl, *, started_at: float | None = None) -> None:
        self.daemon = daemon
        # The monotonic time uptime counts from (the control socket's bind, in the daemon).
        self.started_at = time.monotonic() if started_at is None else started_at
        missing = [op for op in OPERATIONS if not callable(getattr(self, op, None))]
        if missing:  # the table and this class are out of step: a bug, found at start-up
            raise TypeError(f"no handler for the control operations {missing}")

    def ping(self) -> dict[str, Any]:
        daemon = self.daemon
        return {
            "pong": True,
            "version": __version__,
            "node": daemon.node_name(),
            "pid": os.getpid(),
            "uptime_seconds": round(time.monotonic() - self.started_at, 3),
            "database": daemon.database_state(),
            "clock_skew_seconds": round(daemon.clock_skew_seconds(), 3),
        }

    def nodes(self) -> dict[str, Any]:
        this = self.daemon.node_name()
        return {
            "lease_seconds": self.daemon.lease().total_seconds(),
            "nodes": [node_view(node, live=live, this=this) for node, live in self.daemon.nodes()],
        }

    def jobs(self) -> dict[str, Any]:
        return {"jobs": self.daemon.describe_jobs()}

    def schedules(self) -> dict[str, Any]:
        return {"schedules": self.daemon.describe_schedules()}

    def executions(self, job: str | None, status: BatchStatus | None, limit: int) -> dict[str, Any]:
        return {"executions": _views(self.daemon.list_executions(job, status, limit))}

    def execution(self, id: int, history: bool = False) -> dict[str, Any]:
        view = self._execution(id)
        if history:
            view["history"] = [status_change_view(c) for c in self.daemon.status_history(id)]
        return view

    def log(self, id: int, offset: int) -> dict[str, Any]:
        return self.daemon.execution_log(id, offset)

    def _execution(self, id: int) -> dict[str, Any]:
        """The execution, and ``instance``: each step's counts summed over every execution
        of its instance up to this one (a restart carries on the same work)."""
        execution = self.daemon.get_execution(id)
        view = execution_view(execution)
        earlier = [
            each
            for each in self.daemon.list_executions(execution.job_name, None, MAX_LIMIT)
            if each.instance_id == execution.instance_id and each.id <= execution.id
        ]
        instance: dict[str, dict[str, int]] = {}
        for each in earlier:
            for step in each.step_executions:
                counts = instance.setdefault(step.step_name, {})
                for key, value in step.counters().items():
                    counts[key] = counts.get(key, 0) + value
        view["instance"] = {"executions": len(earlier), "steps": instance}
        return view

    def backfills(self, id: int | None) -> dict[str, Any]:
        backfills = self.daemon.backfills
        chosen = [backfills.get(id)] if id is not None else backfills.all()
        return {"backfills": [each.view() for each in chosen]}

    def start(
        self, job: str, params: dict[str, Any] | str, next_run: bool = False
    ) -> dict[str, Any]:
        if next_run:
            return self._fresh_view(self.daemon.start_next_job(job, params))
        return self._fresh_view(self.daemon.start_job(job, params))

    def stop(self, job: str | int | None, id: int | None, backfill: int | None) -> dict[str, Any]:
        """Stop executions; stopping a job (or a backfill by its id) first halts the job's
        backfills on this daemon, so that no further date of theirs starts."""
        backfills = self.daemon.backfills
        if backfill is not None:
            halted = [backfills.get(backfill)]
        elif isinstance(job, str) and not job.strip().isdigit():
            halted = backfills.of_job(job)
        else:
            halted = []
        stopped = {}
        for each in halted:
            for execution in backfills.stop(each, "stopped by request"):
                stopped[execution.id] = execution
        target = job if job is not None else id
        if target is not None:
            for execution in self.daemon.stop_executions(target):
                stopped[execution.id] = execution
        return {
            "stopped": _views(stopped.values()),
            "backfills": [each.view() for each in halted],
        }

    def restart(self, job: str | int | None, id: int | None) -> dict[str, Any]:
        target = job if job is not None else id
        assert target is not None  # the protocol requires one of them
        return self._fresh_view(self.daemon.restart_job(target))

    def _fresh_view(self, execution_id: int) -> dict[str, Any]:
        # Read back rather than send the record the operator returned: the job's thread
        # may already be updating that very object.
        return execution_view(self.daemon.get_execution(execution_id))

    def abandon(self, id: int) -> dict[str, Any]:
        return execution_view(self.daemon.abandon_execution(id))

    def pause(self, schedule: str) -> dict[str, Any]:
        self.daemon.pause_schedule(schedule)
        return {"schedule": schedule, "paused": True}

    def resume(self, schedule: str) -> dict[str, Any]:
        self.daemon.resume_schedule(schedule)
        return {"schedule": schedule, "paused": False}

    def fire(self, schedule: str) -> dict[str, Any]:
        outcome, last = self.daemon.fire_schedule(schedule)
        return {
            "schedule": schedule,
            "outcome": outcome,
            "fire_time": iso(last.fire_time) if last is not None else None,
            "execution_id": last.execution_id if last is not None else None,
            "params": last.params if last is not None else None,
            "message": last.message if last is not None else None,
        }

    def backfill(
        self,
        job: str,
        first: date,
        last: date,
        param: str,
        params: dict[str, Any],
        max_concurrent: int,
        dry_run: bool,
        calendar: str | None,
    ) -> dict[str, Any]:
        _check_range(first, last, MAX_BACKFILL_DAYS, "one backfill runs")
        business_days = self.daemon.calendar(calendar) if calendar is not None else None
        backfills = self.daemon.backfills
        plan = backfills.plan(Span(job, first, last, param, params), business_days)
        backfill = None
        if plan.to_run and not dry_run:
            backfill = backfills.start(plan, max_concurrent)
        return {
            "backfill": backfill.id if backfill is not None else None,
            "job": job,
            "param": param,
            "from": first.isoformat(),
            "to": last.isoformat(),
            "dry_run": dry_run,
            "calendar": calendar,
            "max_concurrent": max_concurrent,
            "dates": [item.date for item in plan.to_run],
            "skipped": plan.skipped,
        }

    def calendar(self, name: str, first: date | None, last: date | None) -> dict[str, Any]:
        first = first if first is not None else date.today()
        last = last if last is not None else first + timedelta(days=DEFAULT_CALENDAR_DAYS - 1)
        _check_range(first, last, MAX_CALENDAR_DAYS, "one request lists")
        days = [day.view() for day in self.daemon.calendar(name).days(first, last)]
        return {
            "calendar": name,
            "from": first.isoformat(),
            "to": last.isoformat(),
            "business_days": sum(1 for day in days if day["business"]),
            "days": days,
        }

    def reload(self) -> dict[str, Any]:
        refused = self.daemon.reload("control socket")
        schedules, watches = self.daemon.trigger_counts()
        return {
            "accepted": refused is None,
            "error": refused,
            "schedules": schedules,
            "watches": watches,
        }

    def recover(self) -> dict[str, Any]:
        recovered, trusted = self.daemon.recover(raise_errors=True)
        return {"recovered": _views(recovered), "heartbeats_trusted": trusted}

    def purge(self, days: int, dry_run: bool) -> dict[str, Any]:
        before, counts = self.daemon.purge_history(days, dry_run=dry_run)
        return {
            "days": days,
            "before": iso(before),
            "dry_run": dry_run,
            "executions": counts.executions,
            "step_executions": counts.step_executions,
            "instances": counts.instances,
        }


def _check_range(first: date, last: date, limit: int, what: str) -> None:
    """A range of dates from ``first`` to ``last``, both included, of at most ``limit``
    days: a typo in a year must not plan (or list) a century."""
    if last < first:
        raise ProtocolError(BAD_REQUEST, f"'to' ({last}) is before 'from' ({first})")
    days = (last - first).days + 1
    if days > limit:
        raise ProtocolError(BAD_REQUEST, f"{days} dates is more than {what} ({limit})")


def _views(executions: Iterable[JobExecution]) -> list[dict[str, Any]]:
    return [execution_view(execution) for execution in executions]


__all__ = ["Handlers"]
