""":class:`DaemonFacade`: the running daemon as the control socket sees it.

The control server reaches the daemon only through
:class:`~batchd.daemon.api.DaemonControl`; this is its implementation over the daemon's
components (membership, operator, scheduler, backfills) and what only the daemon itself has
(its running config, a reload, a recovery pass). The service builds it once its
components have started, and hands it to the control server before that serves.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class DaemonCore(Protocol):
    """What only the daemon itself has: its running config (a reload replaces it), a
    reload and a recovery pass (:class:`~batchd.daemon.service.Daemon`)."""

    settings: Settings

    def reload(self, asked_by: str) -> str | None: ...

    def recover(self, *, raise_errors: bool = False) -> tuple[list[JobExecution], bool]: ...


@dataclass(frozen=True)
class DaemonFacade:
    """:class:`~batchd.daemon.api.DaemonControl` over the running daemon's components (each
    method is documented there)."""

    daemon: DaemonCore
    membership: Membership
    operator: JobOperator
    scheduler: Scheduler
    backfills: Backfills

    # ------------------------------------------------------------------ the node

    def node_name(self) -> str:
        return self.membership.name

    def database_state(self) -> str:
        return self.membership.database_state()

    def clock_skew_seconds(self) -> float:
        return self.membership.clock.skew_seconds

    def lease(self) -> timedelta:
        return self.membership.lease

    def nodes(self) -> list[tuple[NodeRecord, bool]]:
        return self.membership.nodes()

    def reload(self, asked_by: str) -> str | None:
        return self.daemon.reload(asked_by)

    def trigger_counts(self) -> tuple[int, int]:
        settings = self.daemon.settings
        return len(settings.schedules), len(settings.watches)

    def recover(self, *, raise_errors: bool = False) -> tuple[list[JobExecution], bool]:
        return self.daemon.recover(raise_errors=raise_errors)

    # ------------------------------------------------------------------ jobs, executions

    def describe_jobs(self) -> list[dict[str, Any]]:
        return [job.describe() for job in self.operator.registry.jobs()]

    def list_executions(
        self, job: str | None, status: BatchStatus | None, limit: int
    ) -> list[JobExecution]:
        return self.operator.list_executions(job_name=job, status=status, limit=limit)

    def get_execution(self, execution_id: int) -> JobExecution:
        return self.operator.get_execution(execution_id)

    def start_job(self, job: str, params: dict[str, Any] | str) -> int:
        return self.operator.start_async(job, params).id

    def start_next_job(self, job: str, params: dict[str, Any] | str) -> int:
        return self.operator.start_next_async(job, params).id

    def execution_log(self, execution_id: int, offset: int) -> dict[str, Any]:
        operator = self.operator
        execution = operator.get_execution(execution_id)
        writing = isinstance(operator, ProcessOperator) and operator.log_is_open(execution_id)
        return read_log(self.daemon.settings.log_dir, execution, offset, still_writing=writing)

    def status_history(self, execution_id: int) -> list[StatusChange]:
        self.operator.get_execution(execution_id)  # NoSuchJobExecution when there is none
        return self.operator.repository.status_history(execution_id)

    def stop_executions(self, target: str | int) -> list[JobExecution]:
        return self.operator.stop(target)

    def restart_job(self, target: str | int) -> int:
        return self.operator.restart_async(target).id

    def abandon_execution(self, execution_id: int) -> JobExecution:
        return self.operator.abandon(execution_id)

    def purge_history(self, before_days: int, *, dry_run: bool) -> tuple[datetime, PurgeResult]:
        repository = self.operator.repository
        before = repository.clock() - timedelta(days=before_days)
        purged = repository.purge(before, dry_run=dry_run)
        if not dry_run:
            purge_logs(self.daemon.settings.log_dir, repository)
        return before, purged

    # ------------------------------------------------------------------ schedules

    def describe_schedules(self) -> list[dict[str, Any]]:
        return self.scheduler.describe()

    def pause_schedule(self, schedule: str) -> None:
        self.scheduler.pause(schedule)

    def resume_schedule(self, schedule: str) -> None:
        self.scheduler.resume(schedule)

    def fire_schedule(self, schedule: str) -> tuple[str, FireResult | None]:
        outcome = self.scheduler.fire(schedule)
        return outcome, self.scheduler.last_result(schedule)

    def calendar(self, name: str) -> Calendar:
        return self.scheduler.calendar(name)


__all__ = ["DaemonFacade"]
