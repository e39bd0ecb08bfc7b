"""What the control socket needs of a running daemon: :class:`DaemonControl`.

The control server (:mod:`batchd.daemon.control`) and its operations
(:mod:`batchd.daemon.handlers`) see the daemon only through this interface, never its
operator, scheduler, membership or settings, so the daemon can be restructured freely as
long as it keeps these methods. :class:`~batchd.daemon.facade.DaemonFacade` implements it
over the daemon's components.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from batchd.daemon.backfill import Backfills
    from batchd.daemon.calendars import Calendar
    from batchd.daemon.scheduler import FireResult
    from batchd.model import BatchStatus, JobExecution
    from batchd.repository.history import PurgeResult
    from batchd.repository.nodes import NodeRecord
    from batchd.repository.status_history import StatusChange


class DaemonControl(Protocol):
    """The running daemon as the control socket sees it. Errors are raised as
    :class:`~batchd.errors.BatchError` subclasses (their class name is the error type the
    client sees); anything else is answered as an internal error."""

    def node_name(self) -> str:
        """This node's name (``node`` in the config)."""
        ...

    def database_state(self) -> str:
        """``"ok"`` if the repository answers a query now and answered the last heartbeat,
        else one line saying what is wrong."""
        ...

    def clock_skew_seconds(self) -> float:
        """How far this host's clock is from the database's, in seconds (last heartbeat)."""
        ...

    def lease(self) -> timedelta:
        """How long a node's heartbeat stays valid (``lease`` in the config)."""
        ...

    def nodes(self) -> list[tuple[NodeRecord, bool]]:
        """Every node registered in the repository, with whether it is live."""
        ...

    def describe_jobs(self) -> list[dict[str, Any]]:
        """The registered jobs, as ``Job.describe()`` gives them."""
        ...

    def describe_schedules(self) -> list[dict[str, Any]]:
        """The schedules with their next and last fires (``Scheduler.describe()``)."""
        ...

    def list_executions(
        self, job: str | None, status: BatchStatus | None, limit: int
    ) -> list[JobExecution]:
        """At most ``limit`` executions, newest first, of one job and/or status if given."""
        ...

    def get_execution(self, execution_id: int) -> JobExecution:
        """One execution, read now. NoSuchJobExecution if there is none."""
        ...

    def start_job(self, job: str, params: dict[str, Any] | str) -> int:
        """Start ``job`` with ``params`` without waiting for it; the new execution's id."""
        ...

    def start_next_job(self, job: str, params: dict[str, Any] | str) -> int:
        """Start a new instance of ``job``: ``params`` and the next run id of its
        incrementer, without waiting for it; the new execution's id."""
        ...

    def execution_log(self, execution_id: int, offset: int) -> dict[str, Any]:
        """``{"text", "offset", "ended"}``: the execution's log from byte ``offset``
        (DESIGN §6). NoSuchJobExecution if there is no such execution."""
        ...

    def status_history(self, execution_id: int) -> list[StatusChange]:
        """Every status change of the execution and its steps, oldest first."""
        ...

    def stop_executions(self, target: str | int) -> list[JobExecution]:
        """Ask the running executions of a job (by name) or one execution (by id) to stop;
        returns those asked."""
        ...

    def restart_job(self, target: str | int) -> int:
        """Restart a job's newest instance (by name) or an execution's instance (by id)
        without waiting for it; the new execution's id."""
        ...

    def abandon_execution(self, execution_id: int) -> JobExecution:
        """Mark an execution ABANDONED (it is never restarted); returns it."""
        ...

    def pause_schedule(self, schedule: str) -> None:
        """Stop firing ``schedule`` until it is resumed. NoSuchSchedule if unknown."""
        ...

    def resume_schedule(self, schedule: str) -> None:
        """Fire ``schedule`` on time again."""
        ...

    def fire_schedule(self, schedule: str) -> tuple[str, FireResult | None]:
        """Fire ``schedule`` now (paused or not): the outcome, and the newest fire of it
        in this process (None if there is none)."""
        ...

    def calendar(self, name: str) -> Calendar:
        """The configured calendar ``name`` (of the running config); NoSuchCalendar if
        there is none."""
        ...

    @property
    def backfills(self) -> Backfills:
        """The backfills this daemon runs: planned, started and stopped through it."""
        ...

    def reload(self, asked_by: str) -> str | None:
        """Reload the config as SIGHUP does; None, or why the new config is refused (the
        running one is kept): the config error, naming each bad key."""
        ...

    def trigger_counts(self) -> tuple[int, int]:
        """How many schedules and watches the running config has."""
        ...

    def recover(self, *, raise_errors: bool = False) -> tuple[list[JobExecution], bool]:
        """One crash-recovery pass: the executions it marked FAILED, and whether old
        heartbeats were trusted to mean dead nodes."""
        ...

    def purge_history(self, before_days: int, *, dry_run: bool) -> tuple[datetime, PurgeResult]:
        """Delete (or with ``dry_run`` count) the history of complete instances that ended
        more than ``before_days`` days ago by the database's clock; the cut-off time and
        what was (or would be) deleted."""
        ...


__all__ = ["DaemonControl"]
