""":class:`DaemonFacade`: the running daemon as the control socket sees it.

The control server reaches the daemon only through
:class:`~batchd.daemon.api.DaemonControl`; this is its implementation over the daemon's
components (membership, operator, scheduler, backfills) and the two things only the daemon
itself can do (reload its config, run a recovery pass). The service builds it once its
components have started, and hands it to the control server before that serves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from batchd.daemon.workers import ProcessOperator, purge_logs, read_log

if TYPE_CHECKING:
    from batchd.daemon.backfill import Backfills
    from batchd.daemon.calendars import Calendar
    from batchd.daemon.membership import Membership
    from batchd.daemon.scheduler import FireResult, Scheduler
    from batchd.daemon.settings import Settings
    from batchd.engine import JobOperator
    from batchd.model import BatchStatus, JobExecution
    from batchd.repository.history import PurgeResult
    from batchd.repository.nodes import NodeRecord
    from batchd.repository.status_history import StatusChange


class Recover(Protocol):
    """The daemon's recovery pass (:meth:`~batchd.daemon.service.Daemon.recover`)."""

    def __call__(self, *, raise_errors: bool = False) -> tuple[list[JobExecution], bool]: ...


class DaemonFacade:
    """:class:`~batchd.daemon.api.DaemonControl` over the running daemon's components (each
    method is documented there). ``settings()`` is the running config (a reload replaces
    it)."""

    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        membership: Membership,
        operator: JobOperator,
        scheduler: Scheduler,
        backfills: Backfills,
        reload: Callable[[str], str | None],
        recover: Recover,
    ) -> None:
        self._settings = settings
        self._membership = membership
        self._operator = operator
        self._scheduler = scheduler
        self.backfills = backfills
        self._reload = reload
        self._recover = recover

    # ------------------------------------------------------------------ the node

    def node_name(self) -> str:
        return self._membership.name

    def database_state(self) -> str:
        return self._membership.database_state()

    def clock_skew_seconds(self) -> float:
        return self._membership.clock.skew_seconds

    def lease(self) -> timedelta:
        return self._membership.lease

    def nodes(self) -> list[tuple[NodeRecord, bool]]:
        return self._membership.nodes()

    def reload(self, asked_by: str) -> str | None:
        return self._reload(asked_by)

    def trigger_counts(self) -> tuple[int, int]:
        settings = self._settings()
        return len(settings.schedules), len(settings.watches)

    def recover(self, *, raise_errors: bool = False) -> tuple[list[JobExecution], bool]:
        return self._recover(raise_errors=raise_errors)

    # ------------------------------------------------------------------ jobs, executions

    def describe_jobs(self) -> list[dict[str, Any]]:
        return [job.describe() for job in self._operator.registry.jobs()]

    def list_executions(
        self, job: str | None, status: BatchStatus | None, limit: int
    ) -> list[JobExecution]:
        return self._operator.list_executions(job_name=job, status=status, limit=limit)

    def get_execution(self, execution_id: int) -> JobExecution:
        return self._operator.get_execution(execution_id)

    def start_job(self, job: str, params: dict[str, Any] | str) -> int:
        return self._operator.start_async(job, params).id

    def start_next_job(self, job: str, params: dict[str, Any] | str) -> int:
        return self._operator.start_next_async(job, params).id

    def execution_log(self, execution_id: int, offset: int) -> dict[str, Any]:
        operator = self._operator
        execution = operator.get_execution(execution_id)
        writing = isinstance(operator, ProcessOperator) and operator.log_is_open(execution_id)
        return read_log(self._settings().log_dir, execution, offset, still_writing=writing)

    def status_history(self, execution_id: int) -> list[StatusChange]:
        self._operator.get_execution(execution_id)  # NoSuchJobExecution when there is none
        return self._operator.repository.status_history(execution_id)

    def stop_executions(self, target: str | int) -> list[JobExecution]:
        return self._operator.stop(target)

    def restart_job(self, target: str | int) -> int:
        return self._operator.restart_async(target).id

    def abandon_execution(self, execution_id: int) -> JobExecution:
        return self._operator.abandon(execution_id)

    def purge_history(self, before_days: int, *, dry_run: bool) -> tuple[datetime, PurgeResult]:
        repository = self._operator.repository
        before = repository.clock() - timedelta(days=before_days)
        purged = repository.purge(before, dry_run=dry_run)
        if not dry_run:
            purge_logs(self._settings().log_dir, repository)
        return before, purged

    # ------------------------------------------------------------------ schedules

    def describe_schedules(self) -> list[dict[str, Any]]:
        return self._scheduler.describe()

    def pause_schedule(self, schedule: str) -> None:
        self._scheduler.pause(schedule)

    def resume_schedule(self, schedule: str) -> None:
        self._scheduler.resume(schedule)

    def fire_schedule(self, schedule: str) -> tuple[str, FireResult | None]:
        outcome = self._scheduler.fire(schedule)
        return outcome, self._scheduler.last_result(schedule)

    def calendar(self, name: str) -> Calendar:
        return self._scheduler.calendar(name)


__all__ = ["DaemonFacade"]
