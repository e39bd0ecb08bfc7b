"""The job repository: where instances, executions and checkpoints live.

Every write that a running execution's owner makes is compare-and-set on the version it
last saw, so that an execution recovered, stopped or abandoned elsewhere is never
overwritten by a late owner: the owner gets :class:`ExecutionLost` and gives up its run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, OperationalError

from batchd.errors import (
    ExecutionLost,
    JobExecutionAlreadyRunning,
    JobInstanceAlreadyComplete,
    RepositoryError,
)
from batchd.model import (
    RESTARTABLE_STATUSES,
    RUNNING_STATUSES,
    BatchStatus,
    JobExecution,
    canonical_json,
    database_identity,
)
from batchd.repository import migrate
from batchd.repository.base import RUNNING, Clock, inserted_id, utc_now
from batchd.repository.connect import create_database_engine, parse_database_url
from batchd.repository.execution_statements import (
    INSERT_EXECUTION,
    INSERT_JOB_CONTEXT,
    UPDATE_IF_UNCHANGED,
)
from batchd.repository.executions import (
    ExecutionQueries,
    last_of_instance,
    load_job_context,
    save_job_context,
)
from batchd.repository.history import HistoryQueries, JobSummary, PurgeResult
from batchd.repository.instances import InstanceQueries, find_or_create_instance
from batchd.repository.liveness import Liveness
from batchd.repository.mysql import is_duplicate_of
from batchd.repository.rows import to_job_execution
from batchd.repository.status_history import history_rows, insert_history, record_changes
from batchd.repository.steps import (
    Begun,
    StepEnd,
    StepHistory,
    StepRecords,
    failed_step_values,
)
from batchd.repository.tables import job_execution, step_execution

log = logging.getLogger(__name__)

# The partial unique index that allows one running execution per instance.
RUNNING_INDEX = next(ix for ix in job_execution.indexes if ix.name == "uq_job_execution_running")

# Defined in the parts of the repository, imported from here too.
__all__ = [
    "Clock",
    "JobSummary",
    "Owner",
    "PurgeResult",
    "SqlJobRepository",
    "StepHistory",
    "utc_now",
]


@dataclass(frozen=True)
class Owner:
    """Who runs an execution: recorded so that crash recovery can tell if it is alive."""

    host: str
    pid: int


class SqlJobRepository(ExecutionQueries, InstanceQueries, StepRecords, HistoryQueries, Liveness):
    """A job repository in SQLite or PostgreSQL, created or upgraded on open.

    ``SqlJobRepository("sqlite:///batchd.db")`` or
    ``SqlJobRepository("postgresql+psycopg://user@host/db")``; an existing Engine works too.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        *,
        clock: Clock = utc_now,
        upgrade: bool = True,
    ) -> None:
        if isinstance(url_or_engine, Engine):
            self.engine = url_or_engine
        else:
            parsed = parse_database_url(url_or_engine)
            if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
                raise RepositoryError(
                    "an in-memory SQLite database cannot be shared between connections: "
                    "give the repository a file, e.g. sqlite:///batchd.db"
                )
            self.engine = create_database_engine(parsed)
        self.url = self.engine.url
        self.clock = clock
        if upgrade:
            try:
                migrate.upgrade(self.engine)
            except OperationalError as exc:
                self.engine.dispose()
                raise RepositoryError(
                    f"cannot open database {self.url.render_as_string(hide_password=True)}: "
                    f"{_first_line(exc.orig)}"
                ) from None

    @property
    def database_id(self) -> str:
        """What the database says it is (asked once per Engine): a writer whose database
        says the same joins the chunk's transaction."""
        return database_identity(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"SqlJobRepository({self.url.render_as_string(hide_password=True)!r})"

    # ------------------------------------------------------------------ creating

    def create_execution(
        self,
        *,
        job_name: str,
        job_key: str,
        identifying_params: dict[str, Any],
        params: dict[str, Any],
        owner: Owner,
        decide: Callable[[JobExecution | None], None],
    ) -> tuple[JobExecution, JobExecution | None]:
        """Find or create the instance and add a STARTING execution to it, in one transaction.

        ``decide(last_execution)`` raises to refuse (already complete, not restartable...);
        it runs while the instance row is locked, so its verdict cannot go stale before
        the insert. The partial unique index refuses a second running execution whatever
        happens in Python. Returns the new execution and the previous one (None if first).
        """
        now = self.clock()
        params_json = canonical_json(params)
        try:
            with self.engine.begin() as conn:
                instance_id, new = find_or_create_instance(
                    conn, job_name, job_key, identifying_params, now
                )
                last = None if new else last_of_instance(conn, instance_id)
                decide(last)
                execution = JobExecution(
                    id=0,
                    instance_id=instance_id,
                    job_name=job_name,
                    # As a read gives them back: parameters from their JSON, times in UTC.
                    params=json.loads(params_json),
                    status=BatchStatus.STARTING,
                    create_time=now.astimezone(UTC),
                    last_updated=now.astimezone(UTC),
                    owner_host=owner.host,
                    owner_pid=owner.pid,
                    heartbeat=now.astimezone(UTC),
                    exit_status=BatchStatus.STARTING.value,
                    attempt=(last.attempt if last is not None else 0) + 1,
                )
                execution.id = inserted_id(
                    conn.execute(
                        INSERT_EXECUTION,
                        {
                            "instance_id": instance_id,
                            "job_name": job_name,
                            "params": params_json,
                            "status": BatchStatus.STARTING.value,
                            "create_time": now,
                            "last_updated": now,
                            "owner_host": owner.host,
                            "owner_pid": owner.pid,
                            "heartbeat": now,
                            "version": 0,
                            "attempt": execution.attempt,
                        },
                    )
                )
                record_changes(
                    conn, [(execution.id, None, None, BatchStatus.STARTING)], at=now, node=self.node
                )
                # A restart continues with the job context its previous execution saved.
                previous_context = load_job_context(conn, last.id) if last is not None else {}
                conn.execute(
                    INSERT_JOB_CONTEXT,
                    {"job_execution_id": execution.id, "context": canonical_json(previous_context)},
                )
        except IntegrityError as exc:
            if _is_second_running_execution(exc):
                raise JobExecutionAlreadyRunning(
                    f"job {job_name!r} already has a running execution for parameters "
                    f"{canonical_json(identifying_params)}"
                ) from None
            raise
        return execution, last

    # ------------------------------------------------- owner's writes (compare-and-set)

    def mark_started(self, execution: JobExecution) -> None:
        """STARTING -> STARTED. If a stop was requested meanwhile the execution stays
        STOPPING (the caller sees it in ``execution.status``); if it was ended elsewhere,
        ExecutionLost."""
        now = self.clock()
        with self.engine.begin() as conn:
            begun = self._begin(conn, execution, now)
            insert_history(conn, begun.history)
        begun.apply(execution, now)

    def _begin(self, conn: Connection, execution: JobExecution, now: datetime) -> Begun:
        if _update_if_unchanged(
            conn,
            execution,
            [BatchStatus.STARTING.value],
            status=BatchStatus.STARTED.value,
            start_time=now,
            last_updated=now,
            heartbeat=now,
        ):
            history = history_rows(
                [(execution.id, None, None, BatchStatus.STARTED)], at=now, node=self.node
            )
            return Begun(BatchStatus.STARTED, execution.version + 1, history)
        current = self._reload_owned(conn, execution)
        # A stop arrived before the run began: record when it began, keep STOPPING.
        conn.execute(
            update(job_execution)
            .where(job_execution.c.id == execution.id)
            .values(start_time=now, last_updated=now, version=current.version + 1)
        )
        return Begun(current.status, current.version + 1, [])

    def finish_execution(
        self,
        execution: JobExecution,
        status: BatchStatus,
        exit_message: str | None,
        job_context: dict[str, Any],
        *,
        exit_status: str | None = None,
        ending: StepEnd | None = None,
    ) -> None:
        """Record the end of an execution (its exit status, None: the status's name, and
        its job context), and with ``ending`` its last step's end first, in one
        transaction. A stop requested meanwhile does not prevent it; a recovery or
        abandon elsewhere does."""
        now = self.clock()
        with self.engine.begin() as conn:
            history = self._end_step(conn, ending, now) if ending is not None else []
            while not _end_if_unchanged(
                conn, execution, status, exit_message, now, exit_status=exit_status or status.value
            ):
                execution.version = self._reload_owned(conn, execution).version
            history += history_rows(
                [(execution.id, None, None, status)], at=now, node=self.node, message=exit_message
            )
            insert_history(conn, history)
            save_job_context(conn, execution.id, job_context)
        if ending is not None:
            ending.recorded(now)
        execution.status, execution.exit_message, execution.end_time = status, exit_message, now
        execution.exit_status = exit_status or status.value
        execution.version += 1

    def _reload_owned(self, conn: Connection, execution: JobExecution) -> JobExecution:
        """After a failed compare-and-set: the current row if it is still running
        (a stop was requested), else ExecutionLost."""
        row = (
            conn.execute(select(job_execution).where(job_execution.c.id == execution.id))
            .mappings()
            .first()
        )
        if row is None:
            raise ExecutionLost(f"job execution {execution.id} no longer exists")
        current = to_job_execution(row)
        if current.status not in RUNNING_STATUSES:
            raise ExecutionLost(
                f"job execution {execution.id} was ended elsewhere ({current.status.value}"
                f"{': ' + current.exit_message if current.exit_message else ''}); "
                "this process gives up its run"
            )
        return current

    # ------------------------------------------------------ requests from anyone

    def request_stop(self, execution_id: int) -> bool:
        """STARTING/STARTED -> STOPPING. False if it was not running (not an error)."""
        return self._move(
            execution_id, [BatchStatus.STARTING, BatchStatus.STARTED], BatchStatus.STOPPING
        )

    def abandon(self, execution_id: int) -> JobExecution:
        """STOPPED/FAILED/UNKNOWN -> ABANDONED: the instance will not be restarted."""
        execution = self.require_execution(execution_id)
        if execution.status == BatchStatus.ABANDONED:
            return execution
        if execution.status.is_running:
            raise JobExecutionAlreadyRunning(
                f"cannot abandon job execution {execution_id}: it is {execution.status.value}; "
                "stop it first"
            )
        if execution.status == BatchStatus.COMPLETED:
            raise JobInstanceAlreadyComplete(
                f"cannot abandon job execution {execution_id}: it COMPLETED"
            )
        now = self.clock()
        end_time = func.coalesce(job_execution.c.end_time, now)
        changed = self._move(
            execution_id, RESTARTABLE_STATUSES, BatchStatus.ABANDONED, now, end_time=end_time
        )
        if not changed:  # its status changed between the read and the write: say what it is
            return self.abandon(execution_id)
        return self.require_execution(execution_id)

    def _move(
        self,
        execution_id: int,
        statuses: Iterable[BatchStatus],
        status: BatchStatus,
        now: datetime | None = None,
        **more: Any,
    ) -> bool:
        """One of ``statuses`` -> ``status`` (whatever its version), recorded in the status
        history; False if the execution was in none of them."""
        now = self.clock() if now is None else now
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(job_execution)
                .where(
                    job_execution.c.id == execution_id,
                    job_execution.c.status.in_([s.value for s in statuses]),
                )
                .values(
                    status=status.value,
                    last_updated=now,
                    version=job_execution.c.version + 1,
                    **more,
                )
            ).rowcount
            if changed == 1:
                record_changes(conn, [(execution_id, None, None, status)], at=now, node=self.node)
        return bool(changed == 1)

    def mark_failed(self, execution: JobExecution, reason: str) -> bool:
        """Recovery: a running execution (and its running steps) -> FAILED, if it is still
        the way ``execution`` saw it. False when it changed meanwhile."""
        now = self.clock()
        with self.engine.begin() as conn:
            if not _end_if_unchanged(conn, execution, BatchStatus.FAILED, reason, now):
                return False
            running_steps = conn.execute(
                select(step_execution.c.id, step_execution.c.step_name).where(
                    step_execution.c.job_execution_id == execution.id,
                    step_execution.c.status.in_(RUNNING),
                )
            ).all()
            conn.execute(
                update(step_execution)
                .where(
                    step_execution.c.job_execution_id == execution.id,
                    step_execution.c.status.in_(RUNNING),
                )
                .values(failed_step_values(reason, now))
            )
            record_changes(
                conn,
                [(execution.id, None, None, BatchStatus.FAILED)]
                + [(execution.id, s.id, s.step_name, BatchStatus.FAILED) for s in running_steps],
                at=now,
                node=self.node,
                message=reason,
            )
        return True


def _update_if_unchanged(
    conn: Connection, execution: JobExecution, statuses: Sequence[str], **values: Any
) -> bool:
    """Compare-and-set: update the execution's row (and bump its version) only if it is
    still at the version ``execution`` last saw and in one of ``statuses``."""
    changed = conn.execute(
        UPDATE_IF_UNCHANGED,
        {
            **values,
            "version": execution.version + 1,
            "b_id": execution.id,
            "b_version": execution.version,
            "b_statuses": list(statuses),
        },
    ).rowcount
    return bool(changed == 1)


def _end_if_unchanged(
    conn: Connection,
    execution: JobExecution,
    status: BatchStatus,
    message: str | None,
    now: datetime,
    **more: Any,
) -> bool:
    """Compare-and-set a running execution's end."""
    return _update_if_unchanged(
        conn,
        execution,
        RUNNING,
        status=status.value,
        exit_message=message,
        end_time=now,
        last_updated=now,
        **more,
    )


def _is_second_running_execution(error: IntegrityError) -> bool:
    """Whether the partial unique index refused a second running execution of an instance:
    PostgreSQL names the index; SQLite names only its columns, which no other unique
    constraint of a new execution's rows has."""
    original = error.orig
    if is_duplicate_of(original, str(RUNNING_INDEX.name)):  # MySQL, MariaDB
        return True
    diag = getattr(original, "diag", None)
    if diag is not None:
        return bool(diag.constraint_name == RUNNING_INDEX.name)
    columns = ", ".join(f"{job_execution.name}.{column.name}" for column in RUNNING_INDEX.columns)
    return (
        getattr(original, "sqlite_errorname", None) == "SQLITE_CONSTRAINT_UNIQUE"
        and str(original) == f"UNIQUE constraint failed: {columns}"
    )


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip() if error is not None else "unknown error"
    return text.splitlines()[0] if text else type(error).__name__
