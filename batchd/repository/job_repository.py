"""The job repository: where instances, executions and checkpoints live.

Every write that a running execution's owner makes is compare-and-set on the version it
last saw, so that an execution recovered, stopped or abandoned elsewhere is never
overwritten by a late owner: the owner gets :class:`ExecutionLost` and gives up its run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, OperationalError

from batchd.errors import (
    ExecutionLost,
    JobExecutionAlreadyRunning,
    JobInstanceAlreadyComplete,
    NoSuchJobExecution,
    RepositoryError,
)
from batchd.model import (
    RESTARTABLE_STATUSES,
    RUNNING_STATUSES,
    STEP_COUNTERS,
    BatchStatus,
    JobExecution,
    JobInstance,
    StepExecution,
    canonical_json,
    database_identity,
)
from batchd.repository import migrate
from batchd.repository.connect import (
    READ_ONLY_OPTION,
    create_database_engine,
    parse_database_url,
)
from batchd.repository.rows import to_instance, to_job_execution, to_step_execution
from batchd.repository.tables import (
    job_execution,
    job_execution_context,
    job_instance,
    step_context,
    step_execution,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
RUNNING = [s.value for s in RUNNING_STATUSES]
# The partial unique index that allows one running execution per instance.
RUNNING_INDEX = next(ix for ix in job_execution.indexes if ix.name == "uq_job_execution_running")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Owner:
    """Who runs an execution: recorded so that crash recovery can tell if it is alive."""

    host: str
    pid: int


@dataclass(frozen=True)
class StepHistory:
    """What earlier executions of an instance did with one step."""

    last: StepExecution | None
    start_count: int


# One statement per chunk commit: counters, checkpoint and version, compare-and-set.
_COMMIT_CHUNK = (
    update(step_execution)
    .where(step_execution.c.id == bindparam("b_id"))
    .where(step_execution.c.version == bindparam("b_version"))
    .values(
        {name: bindparam(name) for name in STEP_COUNTERS}
        | {
            "execution_context": bindparam("execution_context"),
            "last_updated": bindparam("last_updated"),
            "version": bindparam("new_version"),
        }
    )
)


class SqlJobRepository:
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

    def reading(self) -> Connection:
        """A connection for reads only (on SQLite it never takes the write lock)."""
        return self.engine.connect().execution_options(**{READ_ONLY_OPTION: True})

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

    # ------------------------------------------------------------------ instances

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
        try:
            with self.engine.begin() as conn:
                instance_id = self._find_or_create_instance(
                    conn, job_name, job_key, identifying_params, now
                )
                # Lock the instance row: concurrent creators for one instance queue here.
                conn.execute(
                    update(job_instance)
                    .where(job_instance.c.id == instance_id)
                    .values(version=job_instance.c.version + 1)
                )
                last = self._last_execution_of_instance(conn, instance_id)
                decide(last)
                execution_id = _inserted_id(
                    conn.execute(
                        insert(job_execution).values(
                            instance_id=instance_id,
                            job_name=job_name,
                            params=canonical_json(params),
                            status=BatchStatus.STARTING.value,
                            create_time=now,
                            last_updated=now,
                            owner_host=owner.host,
                            owner_pid=owner.pid,
                            heartbeat=now,
                            version=0,
                        )
                    )
                )
                # A restart continues with the job context its previous execution saved.
                previous_context = self._load_job_context(conn, last.id) if last is not None else {}
                conn.execute(
                    insert(job_execution_context).values(
                        job_execution_id=execution_id, context=canonical_json(previous_context)
                    )
                )
        except IntegrityError as exc:
            if _is_second_running_execution(exc):
                raise JobExecutionAlreadyRunning(
                    f"job {job_name!r} already has a running execution for parameters "
                    f"{canonical_json(identifying_params)}"
                ) from None
            raise
        execution = self.get_execution(execution_id)
        assert execution is not None
        return execution, last

    def _find_or_create_instance(
        self,
        conn: Connection,
        job_name: str,
        job_key: str,
        identifying_params: dict[str, Any],
        now: datetime,
    ) -> int:
        insert_stmt = self._insert_ignoring_conflict(conn).values(
            job_name=job_name,
            job_key=job_key,
            params=canonical_json(identifying_params),
            create_time=now,
            version=0,
        )
        conn.execute(insert_stmt)
        instance_id: int = conn.execute(
            select(job_instance.c.id).where(
                job_instance.c.job_name == job_name, job_instance.c.job_key == job_key
            )
        ).scalar_one()
        return instance_id

    @staticmethod
    def _insert_ignoring_conflict(conn: Connection) -> Any:
        return _dialect_insert(conn)(job_instance).on_conflict_do_nothing(
            index_elements=["job_name", "job_key"]
        )

    def get_instance(self, instance_id: int) -> JobInstance | None:
        with self.reading() as conn:
            row = (
                conn.execute(select(job_instance).where(job_instance.c.id == instance_id))
                .mappings()
                .first()
            )
        return to_instance(row) if row is not None else None

    def find_instance(self, job_name: str, job_key: str) -> JobInstance | None:
        with self.reading() as conn:
            row = (
                conn.execute(
                    select(job_instance).where(
                        job_instance.c.job_name == job_name, job_instance.c.job_key == job_key
                    )
                )
                .mappings()
                .first()
            )
        return to_instance(row) if row is not None else None

    def job_names(self) -> list[str]:
        """Every job name the repository has an instance of."""
        with self.reading() as conn:
            return list(conn.execute(select(job_instance.c.job_name).distinct()).scalars())

    # ----------------------------------------------------------------- executions

    def get_execution(self, execution_id: int) -> JobExecution | None:
        with self.reading() as conn:
            found = self._executions(conn, job_execution.c.id == execution_id, limit=1)
        return found[0] if found else None

    def require_execution(self, execution_id: int) -> JobExecution:
        execution = self.get_execution(execution_id)
        if execution is None:
            raise NoSuchJobExecution(f"no job execution with id {execution_id}")
        return execution

    def list_executions(
        self,
        job_name: str | None = None,
        status: BatchStatus | str | None = None,
        limit: int = 50,
        *,
        instance_id: int | None = None,
    ) -> list[JobExecution]:
        """Executions, newest first."""
        conditions = []
        if job_name is not None:
            conditions.append(job_execution.c.job_name == job_name)
        if status is not None:
            conditions.append(job_execution.c.status == BatchStatus(status).value)
        if instance_id is not None:
            conditions.append(job_execution.c.instance_id == instance_id)
        with self.reading() as conn:
            return self._executions(conn, and_(True, *conditions), limit=limit)

    def running_executions(self) -> list[JobExecution]:
        with self.reading() as conn:
            return self._executions(conn, job_execution.c.status.in_(RUNNING), limit=None)

    def newest_execution_of_job(self, job_name: str) -> JobExecution | None:
        found = self.list_executions(job_name=job_name, limit=1)
        return found[0] if found else None

    def last_execution_of_instance(self, instance_id: int) -> JobExecution | None:
        with self.reading() as conn:
            return self._last_execution_of_instance(conn, instance_id)

    def _last_execution_of_instance(
        self, conn: Connection, instance_id: int
    ) -> JobExecution | None:
        found = self._executions(conn, job_execution.c.instance_id == instance_id, limit=1)
        return found[0] if found else None

    def _executions(
        self, conn: Connection, condition: Any, limit: int | None
    ) -> list[JobExecution]:
        query = select(job_execution).where(condition).order_by(job_execution.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        rows = conn.execute(query).mappings().all()
        if not rows:
            return []
        steps_by_execution: dict[int, list[StepExecution]] = {row["id"]: [] for row in rows}
        step_rows = conn.execute(
            select(step_execution)
            .where(step_execution.c.job_execution_id.in_(list(steps_by_execution)))
            .order_by(step_execution.c.id)
        ).mappings()
        for step_row in step_rows:
            steps_by_execution[step_row["job_execution_id"]].append(to_step_execution(step_row))
        return [to_job_execution(row, steps_by_execution[row["id"]]) for row in rows]

    # ------------------------------------------------- owner's writes (compare-and-set)

    def mark_started(self, execution: JobExecution) -> None:
        """STARTING -> STARTED. If a stop was requested meanwhile the execution stays
        STOPPING (the caller sees it in ``execution.status``); if it was ended elsewhere,
        ExecutionLost."""
        now = self.clock()
        with self.engine.begin() as conn:
            if _update_if_unchanged(
                conn,
                execution,
                [BatchStatus.STARTING.value],
                status=BatchStatus.STARTED.value,
                start_time=now,
                last_updated=now,
                heartbeat=now,
            ):
                execution.status, execution.start_time = BatchStatus.STARTED, now
                execution.version += 1
                return
            current = self._reload_owned(conn, execution)
            # A stop arrived before the run began: record when it began, keep STOPPING.
            conn.execute(
                update(job_execution)
                .where(job_execution.c.id == execution.id)
                .values(start_time=now, last_updated=now, version=current.version + 1)
            )
            execution.status, execution.start_time = current.status, now
            execution.version = current.version + 1

    def finish_execution(
        self,
        execution: JobExecution,
        status: BatchStatus,
        exit_message: str | None,
        job_context: dict[str, Any],
    ) -> None:
        """Record the end of an execution (and its job context). A stop requested
        meanwhile does not prevent it; a recovery or abandon elsewhere does."""
        now = self.clock()
        with self.engine.begin() as conn:
            while not _update_if_unchanged(
                conn,
                execution,
                RUNNING,
                status=status.value,
                exit_message=exit_message,
                end_time=now,
                last_updated=now,
            ):
                execution.version = self._reload_owned(conn, execution).version
            self._save_job_context(conn, execution.id, job_context)
        execution.status, execution.exit_message, execution.end_time = status, exit_message, now
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

    def save_job_context(self, execution_id: int, job_context: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            self._save_job_context(conn, execution_id, job_context)

    @staticmethod
    def _save_job_context(conn: Connection, execution_id: int, context: dict[str, Any]) -> None:
        conn.execute(
            update(job_execution_context)
            .where(job_execution_context.c.job_execution_id == execution_id)
            .values(context=canonical_json(context))
        )

    def load_job_context(self, execution_id: int) -> dict[str, Any]:
        with self.reading() as conn:
            return self._load_job_context(conn, execution_id)

    @staticmethod
    def _load_job_context(conn: Connection, execution_id: int) -> dict[str, Any]:
        text_value = conn.execute(
            select(job_execution_context.c.context).where(
                job_execution_context.c.job_execution_id == execution_id
            )
        ).scalar_one_or_none()
        return json.loads(text_value) if text_value else {}

    # ----------------------------------------------------------------- steps

    def step_history(self, instance_id: int, step_name: str, *, after_id: int = 0) -> StepHistory:
        """The newest execution of ``step_name`` in the instance, and how often it started
        (only step executions with an id above ``after_id``)."""
        with self.reading() as conn:
            rows = (
                conn.execute(
                    select(step_execution)
                    .join(job_execution, job_execution.c.id == step_execution.c.job_execution_id)
                    .where(
                        job_execution.c.instance_id == instance_id,
                        step_execution.c.step_name == step_name,
                        step_execution.c.id > after_id,
                    )
                    .order_by(step_execution.c.id.desc())
                )
                .mappings()
                .all()
            )
        return StepHistory(last=to_step_execution(rows[0]) if rows else None, start_count=len(rows))

    def last_step_executions(
        self, instance_id: int, step_names: Sequence[str], *, after_id: int = 0
    ) -> dict[str, StepExecution]:
        """The newest execution of each of ``step_names`` in the instance (with an id above
        ``after_id``), in one query; names never run are left out."""
        with self.reading() as conn:
            rows = conn.execute(
                select(step_execution)
                .join(job_execution, job_execution.c.id == step_execution.c.job_execution_id)
                .where(
                    job_execution.c.instance_id == instance_id,
                    step_execution.c.step_name.in_(list(step_names)),
                    step_execution.c.id > after_id,
                )
                .order_by(step_execution.c.id)
            ).mappings()
            return {row["step_name"]: to_step_execution(row) for row in rows}

    def get_step_executions(self, step_ids: Sequence[int]) -> list[StepExecution]:
        """These step executions as stored now, in the order of ``step_ids`` (missing ones
        left out)."""
        with self.reading() as conn:
            rows = conn.execute(
                select(step_execution).where(step_execution.c.id.in_(list(step_ids)))
            ).mappings()
            found = {row["id"]: to_step_execution(row) for row in rows}
        return [found[step_id] for step_id in step_ids if step_id in found]

    def execution_status(self, execution_id: int) -> BatchStatus | None:
        """The stored status of a job execution (None if there is no such execution)."""
        with self.reading() as conn:
            value = conn.execute(
                select(job_execution.c.status).where(job_execution.c.id == execution_id)
            ).scalar_one_or_none()
        return BatchStatus(value) if value is not None else None

    def fail_step_if_running(self, step_id: int, reason: str) -> bool:
        """A step execution whose runner is gone (a dead worker) -> FAILED, unless it ended
        meanwhile. Its checkpoint stays, so a restart resumes from it."""
        now = self.clock()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(step_execution)
                .where(step_execution.c.id == step_id, step_execution.c.status.in_(RUNNING))
                .values(_failed_step_values(reason, now))
            ).rowcount
        return changed == 1

    def create_step_execution(
        self, execution: JobExecution, step_name: str, context: dict[str, Any]
    ) -> StepExecution:
        """Add a STARTED step execution, if the job execution is still this owner's."""
        return self.create_step_executions(execution, [(step_name, context)])[0]

    def create_step_executions(
        self, execution: JobExecution, steps: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[StepExecution]:
        """Add STARTED step executions (name, checkpoint) in one transaction, if the job
        execution is still this owner's (a partitioned step's partitions, for instance)."""
        now = self.clock()
        created = []
        with self.engine.begin() as conn:
            status = conn.execute(
                select(job_execution.c.status).where(job_execution.c.id == execution.id)
            ).scalar_one_or_none()
            if status not in RUNNING:
                raise ExecutionLost(
                    f"job execution {execution.id} was ended elsewhere ({status}); "
                    "this process gives up its run"
                )
            for step_name, context in steps:
                step_id = _inserted_id(
                    conn.execute(
                        insert(step_execution).values(
                            job_execution_id=execution.id,
                            step_name=step_name,
                            status=BatchStatus.STARTED.value,
                            execution_context=canonical_json(context),
                            start_time=now,
                            last_updated=now,
                            version=0,
                        )
                    )
                )
                created.append(
                    StepExecution(
                        id=step_id,
                        job_execution_id=execution.id,
                        step_name=step_name,
                        status=BatchStatus.STARTED,
                        start_time=now,
                        last_updated=now,
                        execution_context=dict(context),
                    )
                )
        return created

    @contextmanager
    def chunk_transaction(self, step: StepExecution) -> Iterator[Connection]:
        """The transaction of one chunk of ``step``: writers joining it and the checkpoint
        (:meth:`commit_chunk`) commit together or not at all. When it does not commit, the
        commit's own failure included (a full disk), ``step`` keeps the version of its
        stored row, so that the step's end can still be recorded, with that error."""
        version, last_updated = step.version, step.last_updated
        try:
            with self.engine.begin() as conn:
                yield conn
        except BaseException:
            step.version, step.last_updated = version, last_updated
            raise

    def commit_chunk(self, conn: Connection, step: StepExecution, context_json: str) -> None:
        """Save counters and checkpoint in the chunk's transaction: exactly one statement.
        Raises ExecutionLost (and the caller rolls back) if the step was ended elsewhere."""
        now = self.clock()
        params = step.counters() | {
            "b_id": step.id,
            "b_version": step.version,
            "new_version": step.version + 1,
            "execution_context": context_json,
            "last_updated": now,
        }
        if conn.execute(_COMMIT_CHUNK, params).rowcount != 1:
            raise ExecutionLost(
                f"step execution {step.id} ({step.step_name}) was ended elsewhere; "
                "its chunk is rolled back"
            )
        step.version += 1
        step.last_updated = now

    def finish_step(
        self,
        step: StepExecution,
        status: BatchStatus,
        exit_message: str | None,
        context_json: str,
        *,
        instance_id: int,
        step_context_value: dict[str, Any] | None,
    ) -> None:
        """Record a step's end with its counters, checkpoint and per-instance step context
        (None: a partition, which has none)."""
        now = self.clock()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(step_execution)
                .where(step_execution.c.id == step.id, step_execution.c.version == step.version)
                .values(
                    step.counters()
                    | {
                        "status": status.value,
                        "exit_message": exit_message,
                        "execution_context": context_json,
                        "end_time": now,
                        "last_updated": now,
                        "version": step.version + 1,
                    }
                )
            ).rowcount
            if changed != 1:
                raise ExecutionLost(
                    f"step execution {step.id} ({step.step_name}) was ended elsewhere"
                )
            if step_context_value is not None:
                self._save_step_context(conn, instance_id, step.step_name, step_context_value)
        step.status, step.exit_message, step.end_time = status, exit_message, now
        step.version += 1

    def load_step_context(self, instance_id: int, step_name: str) -> dict[str, Any]:
        with self.reading() as conn:
            text_value = conn.execute(
                select(step_context.c.context).where(
                    step_context.c.instance_id == instance_id,
                    step_context.c.step_name == step_name,
                )
            ).scalar_one_or_none()
        return json.loads(text_value) if text_value else {}

    @staticmethod
    def _save_step_context(
        conn: Connection, instance_id: int, step_name: str, value: dict[str, Any]
    ) -> None:
        dialect_insert = _dialect_insert(conn)
        stmt = dialect_insert(step_context).values(
            instance_id=instance_id, step_name=step_name, context=canonical_json(value)
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["instance_id", "step_name"],
                set_={"context": stmt.excluded.context},
            )
        )

    # ------------------------------------------------------ requests from anyone

    def request_stop(self, execution_id: int) -> bool:
        """STARTING/STARTED -> STOPPING. False if it was not running (not an error)."""
        now = self.clock()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(job_execution)
                .where(
                    job_execution.c.id == execution_id,
                    job_execution.c.status.in_(
                        [BatchStatus.STARTING.value, BatchStatus.STARTED.value]
                    ),
                )
                .values(
                    status=BatchStatus.STOPPING.value,
                    last_updated=now,
                    version=job_execution.c.version + 1,
                )
            ).rowcount
        return changed == 1

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
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(job_execution)
                .where(
                    job_execution.c.id == execution_id,
                    job_execution.c.status.in_([s.value for s in RESTARTABLE_STATUSES]),
                )
                .values(
                    status=BatchStatus.ABANDONED.value,
                    last_updated=now,
                    end_time=func.coalesce(job_execution.c.end_time, now),
                    version=job_execution.c.version + 1,
                )
            ).rowcount
        if changed != 1:  # its status changed between the read and the write: say what it is
            return self.abandon(execution_id)
        return self.require_execution(execution_id)

    def heartbeat(self, execution_ids: Sequence[int]) -> dict[int, BatchStatus]:
        """Record that the owner of these executions is alive; return their statuses
        (so the owner sees a stop requested by another process)."""
        if not execution_ids:
            return {}
        now = self.clock()
        ids = list(execution_ids)
        with self.engine.begin() as conn:
            conn.execute(
                update(job_execution)
                .where(job_execution.c.id.in_(ids), job_execution.c.status.in_(RUNNING))
                .values(heartbeat=now)
            )
            rows = conn.execute(
                select(job_execution.c.id, job_execution.c.status).where(
                    job_execution.c.id.in_(ids)
                )
            ).all()
        return {row.id: BatchStatus(row.status) for row in rows}

    def mark_failed(self, execution: JobExecution, reason: str) -> bool:
        """Recovery: a running execution (and its running steps) -> FAILED, if it is still
        the way ``execution`` saw it. False when it changed meanwhile."""
        now = self.clock()
        with self.engine.begin() as conn:
            if not _update_if_unchanged(
                conn,
                execution,
                RUNNING,
                status=BatchStatus.FAILED.value,
                exit_message=reason,
                end_time=now,
                last_updated=now,
            ):
                return False
            conn.execute(
                update(step_execution)
                .where(
                    step_execution.c.job_execution_id == execution.id,
                    step_execution.c.status.in_(RUNNING),
                )
                .values(_failed_step_values(reason, now))
            )
        return True

    def stale_executions(
        self,
        lease: timedelta,
        *,
        host: str,
        is_alive: Callable[[int], bool],
        trust_heartbeats: bool = True,
    ) -> Iterable[tuple[JobExecution, str]]:
        """Running executions whose owner is gone, with the reason why we think so: a
        process of ``host`` that is not alive, or (``trust_heartbeats``) a heartbeat older
        than ``lease``."""
        cutoff = self.clock() - lease
        for execution in self.running_executions():
            owner_pid = execution.owner_pid
            if execution.owner_host == host and owner_pid is not None and not is_alive(owner_pid):
                yield execution, f"recovered: owner process {owner_pid} on {host} is gone"
                continue
            if not trust_heartbeats:
                continue
            if execution.heartbeat is None or execution.heartbeat < cutoff:
                last_beat = execution.heartbeat.isoformat() if execution.heartbeat else "ever"
                owner = f"{execution.owner_host}:{execution.owner_pid}"
                yield (
                    execution,
                    f"recovered: no heartbeat from {owner} since {last_beat}"
                    f" (lease {lease.total_seconds():g}s)",
                )

    # ------------------------------------------------------------------ metrics

    def job_summaries(self) -> list[JobSummary]:
        """One :class:`JobSummary` per job name that has executions: the status of the
        execution that ended last, the end of its newest COMPLETED execution, its running
        executions and every status its ended executions have had. A few grouped queries
        (no history is loaded): what the metrics' job gauges start from."""
        ended = job_execution.c.status.not_in(RUNNING)
        last_end = (
            select(
                job_execution.c.job_name.label("job_name"),
                func.max(job_execution.c.end_time).label("end_time"),
            )
            .where(ended)
            .group_by(job_execution.c.job_name)
            .subquery()
        )
        with self.reading() as conn:
            last_rows = conn.execute(
                select(
                    job_execution.c.job_name,
                    job_execution.c.id,
                    job_execution.c.status,
                    job_execution.c.end_time,
                )
                .select_from(
                    job_execution.join(
                        last_end,
                        and_(
                            job_execution.c.job_name == last_end.c.job_name,
                            job_execution.c.end_time == last_end.c.end_time,
                        ),
                    )
                )
                .where(ended)
            ).all()
            success_rows = conn.execute(
                select(job_execution.c.job_name, func.max(job_execution.c.end_time))
                .where(job_execution.c.status == BatchStatus.COMPLETED.value)
                .group_by(job_execution.c.job_name)
            ).all()
            status_rows = conn.execute(
                select(job_execution.c.job_name, job_execution.c.status).where(ended).distinct()
            ).all()
            running_rows = conn.execute(
                select(job_execution.c.job_name, job_execution.c.id).where(
                    job_execution.c.status.in_(RUNNING)
                )
            ).all()
        last: dict[str, tuple[datetime, int, BatchStatus]] = {}
        for name, execution_id, status, end_time in last_rows:
            candidate = (end_time, execution_id, BatchStatus(status))
            if name not in last or candidate[:2] > last[name][:2]:
                last[name] = candidate  # equal end times: the newer execution
        success = {name: end_time for name, end_time in success_rows}
        statuses: dict[str, set[BatchStatus]] = {}
        for name, status in status_rows:
            statuses.setdefault(name, set()).add(BatchStatus(status))
        running: dict[str, list[int]] = {}
        for name, execution_id in running_rows:
            running.setdefault(name, []).append(execution_id)
        names = sorted(set(last) | set(success) | set(statuses) | set(running))
        return [
            JobSummary(
                job_name=name,
                last_status=last[name][2] if name in last else None,
                last_end_time=last[name][0] if name in last else None,
                last_execution_id=last[name][1] if name in last else None,
                last_success_time=success.get(name),
                running_ids=tuple(sorted(running.get(name, ()))),
                statuses=frozenset(statuses.get(name, ())),
            )
            for name in names
        ]

    # ------------------------------------------------------------------ history

    def purge(self, before: datetime, *, dry_run: bool = False) -> PurgeResult:
        """Delete the history that ended before ``before``: executions (with their step
        executions and job contexts) of *complete* instances, and then the instances (with
        their step contexts) that have no execution left.

        An instance is complete when its last execution is COMPLETED or ABANDONED: it can
        never run again, so its history is only history. Nothing of an instance that can
        still be restarted (or is running) is ever deleted, whatever its age: restart needs
        the checkpoints and step counts. Schedule fires and claimed trigger files are kept
        (they are what stops a fire or a file from starting twice). ``dry_run`` counts
        without deleting.
        """
        final = [BatchStatus.COMPLETED.value, BatchStatus.ABANDONED.value]
        # Aliases: the subqueries must not correlate with the outer query's job_execution.
        newest, last = job_execution.alias("newest"), job_execution.alias("last")
        last_ids = select(func.max(newest.c.id)).group_by(newest.c.instance_id)
        complete_instances = select(last.c.instance_id).where(
            last.c.id.in_(last_ids), last.c.status.in_(final)
        )
        ended = func.coalesce(job_execution.c.end_time, job_execution.c.last_updated)
        with self.engine.begin() as conn:
            execution_ids = list(
                conn.execute(
                    select(job_execution.c.id, job_execution.c.instance_id).where(
                        job_execution.c.instance_id.in_(complete_instances),
                        job_execution.c.status.not_in(RUNNING),
                        ended < before,
                    )
                ).all()
            )
            ids = [row.id for row in execution_ids]
            touched = sorted({row.instance_id for row in execution_ids})
            counts = PurgeResult(executions=len(ids))
            for batch in _batches(ids):
                counts.step_executions += conn.execute(
                    select(func.count())
                    .select_from(step_execution)
                    .where(step_execution.c.job_execution_id.in_(batch))
                ).scalar_one()
                if not dry_run:
                    conn.execute(
                        delete(step_execution).where(step_execution.c.job_execution_id.in_(batch))
                    )
                    conn.execute(
                        delete(job_execution_context).where(
                            job_execution_context.c.job_execution_id.in_(batch)
                        )
                    )
                    conn.execute(delete(job_execution).where(job_execution.c.id.in_(batch)))
            purged_set = set(ids)
            for batch in _batches(touched):
                remaining = conn.execute(
                    select(job_execution.c.instance_id, job_execution.c.id).where(
                        job_execution.c.instance_id.in_(batch)
                    )
                ).all()
                alive = {row.instance_id for row in remaining if row.id not in purged_set}
                empty = [instance_id for instance_id in batch if instance_id not in alive]
                counts.instances += len(empty)
                if dry_run or not empty:
                    continue
                conn.execute(delete(step_context).where(step_context.c.instance_id.in_(empty)))
                # Only if still empty: a start that found the instance meanwhile keeps it.
                has_execution = (
                    select(job_execution.c.id)
                    .where(job_execution.c.instance_id == job_instance.c.id)
                    .exists()
                )
                conn.execute(
                    delete(job_instance).where(job_instance.c.id.in_(empty), ~has_execution)
                )
        log.info(
            "%s %d job executions (%d step executions) and %d instances that ended before %s",
            "would purge" if dry_run else "purged",
            counts.executions,
            counts.step_executions,
            counts.instances,
            before.isoformat(),
        )
        return counts


@dataclass
class PurgeResult:
    """What :meth:`SqlJobRepository.purge` deleted (or, in a dry run, would delete)."""

    executions: int = 0
    step_executions: int = 0
    instances: int = 0


def _update_if_unchanged(
    conn: Connection, execution: JobExecution, statuses: Sequence[str], **values: Any
) -> bool:
    """Compare-and-set: update the execution's row (and bump its version) only if it is
    still at the version ``execution`` last saw and in one of ``statuses``."""
    changed = conn.execute(
        update(job_execution)
        .where(
            job_execution.c.id == execution.id,
            job_execution.c.version == execution.version,
            job_execution.c.status.in_(statuses),
        )
        .values(version=execution.version + 1, **values)
    ).rowcount
    return bool(changed == 1)


def _is_second_running_execution(error: IntegrityError) -> bool:
    """Whether the partial unique index refused a second running execution of an instance:
    PostgreSQL names the index; SQLite names only its columns, which no other unique
    constraint of a new execution's rows has."""
    original = error.orig
    diag = getattr(original, "diag", None)
    if diag is not None:
        return bool(diag.constraint_name == RUNNING_INDEX.name)
    columns = ", ".join(f"{job_execution.name}.{column.name}" for column in RUNNING_INDEX.columns)
    return (
        getattr(original, "sqlite_errorname", None) == "SQLITE_CONSTRAINT_UNIQUE"
        and str(original) == f"UNIQUE constraint failed: {columns}"
    )


def _failed_step_values(reason: str, now: datetime) -> dict[str, Any]:
    """A running step execution ended FAILED by someone other than its runner."""
    return {
        "status": BatchStatus.FAILED.value,
        "exit_message": reason,
        "end_time": now,
        "last_updated": now,
        "version": step_execution.c.version + 1,
    }


def _dialect_insert(conn: Connection) -> Any:
    """The INSERT construct with ON CONFLICT of the connection's database (the dialect
    module is imported on first use: a SQLite-only process never loads PostgreSQL's)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert
    from sqlalchemy.dialects import sqlite

    return sqlite.insert


def _batches(values: Sequence[int], size: int = 500) -> Iterator[list[int]]:
    """Slices of ``values`` small enough for an ``IN (...)`` on every database."""
    for begin in range(0, len(values), size):
        yield list(values[begin : begin + size])


def _inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None, "an INSERT returns its primary key"
    return int(key[0])


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip() if error is not None else "unknown error"
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class JobSummary:
    """What :meth:`SqlJobRepository.job_summaries` says about one job."""

    job_name: str
    #: Status, end and id of the execution that ended last (None: none has ended).
    last_status: BatchStatus | None
    last_end_time: datetime | None
    last_execution_id: int | None
    #: End of the newest COMPLETED execution (None: never completed).
    last_success_time: datetime | None
    #: Executions STARTING, STARTED or STOPPING now (in any process).
    running_ids: tuple[int, ...]
    #: Every status the job's ended executions have had.
    statuses: frozenset[BatchStatus]
