"""Step executions in the job repository: their records, chunk checkpoints and step
contexts. Every write of a running step's owner is compare-and-set on the version it last
saw (see :mod:`batchd.repository.job_repository`)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, literal, select, update

from batchd.errors import ExecutionLost
from batchd.model import STEP_COUNTERS, BatchStatus, JobExecution, StepExecution, canonical_json
from batchd.repository.base import RUNNING, dialect_insert
from batchd.repository.rows import to_step_execution
from batchd.repository.status_history import (
    StatusHistory,
    history_rows,
    insert_history,
    record_changes,
)
from batchd.repository.tables import job_execution, step_context, step_execution


@dataclass(frozen=True)
class StepHistory:
    """What earlier executions of an instance did with one step."""

    last: StepExecution | None
    start_count: int


@dataclass(frozen=True)
class StepEnd:
    """A step's end as the repository records it: its status, exit message, exit status
    (None: the status's name), final checkpoint (JSON) and the instance's step context
    (None: a partition, which has none). Recorded alone (:meth:`StepRecords.record_step_end`)
    or with the next step's start (:meth:`StepRecords.create_step_executions`)."""

    step: StepExecution
    status: BatchStatus
    exit_message: str | None
    context_json: str
    instance_id: int
    step_context: dict[str, Any] | None
    exit_status: str | None = None

    def recorded(self, now: datetime) -> None:
        """The in-memory step as its committed row now is."""
        step = self.step
        step.status, step.exit_message, step.end_time = self.status, self.exit_message, now
        step.exit_status = self.exit_status or self.status.value
        step.version += 1


@dataclass(frozen=True)
class Begun:
    """What recording an execution's start left: STARTED, or STOPPING when a stop was
    requested before it began; its new version; its status history rows to insert."""

    status: BatchStatus
    version: int
    history: list[dict[str, Any]]

    def apply(self, execution: JobExecution, now: datetime) -> None:
        """The in-memory execution as its committed row now is."""
        execution.status, execution.start_time = self.status, now
        execution.version = self.version


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


# The statements of every run, built once with bound parameters (constructing a Core
# statement and its cache key cost more than executing it on SQLite).
_STEP_HISTORY = (
    select(step_execution)
    .join(job_execution, job_execution.c.id == step_execution.c.job_execution_id)
    .where(
        job_execution.c.instance_id == bindparam("b_instance"),
        step_execution.c.step_name == bindparam("b_step"),
        step_execution.c.id > bindparam("b_after"),
    )
    .order_by(step_execution.c.id.desc())
)
_EXECUTION_STATUS = select(job_execution.c.status).where(job_execution.c.id == bindparam("b_id"))
# A STARTED step execution, inserted only while its job execution runs: one statement that
# both checks and inserts. The new row's id comes back by RETURNING where INSERT has it.
_NOW = bindparam("now", type_=step_execution.c.start_time.type)
_STEP_VALUES = {
    "job_execution_id": job_execution.c.id,
    "step_name": bindparam("step_name", type_=step_execution.c.step_name.type),
    "status": literal(BatchStatus.STARTED.value, step_execution.c.status.type),
    "execution_context": bindparam("context", type_=step_execution.c.execution_context.type),
    "start_time": _NOW,
    "last_updated": _NOW,
    "version": literal(0, step_execution.c.version.type),
}
_INSERT_STEP = insert(step_execution).from_select(
    list(_STEP_VALUES),
    select(*_STEP_VALUES.values()).where(
        job_execution.c.id == bindparam("b_id"), job_execution.c.status.in_(RUNNING)
    ),
)
_INSERT_STEP_RETURNING = _INSERT_STEP.returning(step_execution.c.id)
# The SET clause comes from the parameters' column names.
_FINISH_STEP = update(step_execution).where(
    step_execution.c.id == bindparam("b_id"), step_execution.c.version == bindparam("b_version")
)
_LOAD_STEP_CONTEXT = select(step_context.c.context).where(
    step_context.c.instance_id == bindparam("b_instance"),
    step_context.c.step_name == bindparam("b_step"),
)
_SAVE_STEP_CONTEXT: dict[str, Any] = {}  # by dialect name


class StepRecords(StatusHistory):
    """The step executions' part of :class:`batchd.repository.SqlJobRepository`."""

    def _begin(self, conn: Connection, execution: JobExecution, now: datetime) -> Begun:
        """Record the execution's start (SqlJobRepository's, see its mark_started)."""
        raise NotImplementedError

    def step_history(self, instance_id: int, step_name: str, *, after_id: int = 0) -> StepHistory:
        """The newest execution of ``step_name`` in the instance, and how often it started
        (only step executions with an id above ``after_id``)."""
        with self.reading() as conn:
            rows = (
                conn.execute(
                    _STEP_HISTORY,
                    {"b_instance": instance_id, "b_step": step_name, "b_after": after_id},
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
            step = conn.execute(
                select(step_execution.c.job_execution_id, step_execution.c.step_name).where(
                    step_execution.c.id == step_id
                )
            ).first()
            changed = conn.execute(
                update(step_execution)
                .where(step_execution.c.id == step_id, step_execution.c.status.in_(RUNNING))
                .values(failed_step_values(reason, now))
            ).rowcount
            if changed == 1 and step is not None:
                record_changes(
                    conn,
                    [(step.job_execution_id, step_id, step.step_name, BatchStatus.FAILED)],
                    at=now,
                    node=self.node,
                    message=reason,
                )
        return changed == 1

    def create_step_execution(
        self,
        execution: JobExecution,
        step_name: str,
        context: dict[str, Any],
        *,
        ending: StepEnd | None = None,
    ) -> StepExecution:
        """Add a STARTED step execution, if the job execution is still this owner's; with
        ``ending``, in the transaction that records the previous step's end."""
        return self.create_step_executions(execution, [(step_name, context)], ending=ending)[0]

    def create_step_executions(
        self,
        execution: JobExecution,
        steps: Sequence[tuple[str, dict[str, Any]]],
        *,
        ending: StepEnd | None = None,
        starting: bool = False,
    ) -> list[StepExecution]:
        """Add STARTED step executions (name, checkpoint) in one transaction, if the job
        execution is still this owner's (a partitioned step's partitions, for instance).
        With ``ending``, the same transaction records that step's end first, and with
        ``starting`` the execution's start (:meth:`mark_started`): a crash leaves all or
        none of it. None is added when the start finds a stop requested (the execution
        stays STOPPING, with its start time)."""
        now = self.clock()
        created: list[StepExecution] = []
        with self.engine.begin() as conn:
            begun = self._begin(conn, execution, now) if starting else None
            history = [] if begun is None else begun.history
            if ending is not None:
                history += self._end_step(conn, ending, now)
            returning = conn.dialect.insert_returning
            stopping = begun is not None and begun.status != BatchStatus.STARTED
            for step_name, context in [] if stopping else steps:
                params = {
                    "b_id": execution.id,
                    "step_name": step_name,
                    "context": canonical_json(context),
                    "now": now,
                }
                if returning:
                    step_id = conn.execute(_INSERT_STEP_RETURNING, params).scalar_one_or_none()
                else:
                    result = conn.execute(_INSERT_STEP, params)
                    step_id = result.lastrowid if result.rowcount == 1 else None
                if step_id is None:
                    status = conn.execute(
                        _EXECUTION_STATUS, {"b_id": execution.id}
                    ).scalar_one_or_none()
                    raise ExecutionLost(
                        f"job execution {execution.id} was ended elsewhere ({status}); "
                        "this process gives up its run"
                    )
                history += history_rows(
                    [(execution.id, step_id, step_name, BatchStatus.STARTED)],
                    at=now,
                    node=self.node,
                )
                created.append(
                    StepExecution(
                        id=int(step_id),
                        job_execution_id=execution.id,
                        step_name=step_name,
                        status=BatchStatus.STARTED,
                        start_time=now,
                        last_updated=now,
                        execution_context=dict(context),
                    )
                )
            insert_history(conn, history)
        if begun is not None:
            begun.apply(execution, now)
        if ending is not None:
            ending.recorded(now)
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

    def record_step_end(self, end: StepEnd) -> None:
        """Record a step's end, alone, with its counters, checkpoint, exit status and step
        context."""
        now = self.clock()
        with self.engine.begin() as conn:
            insert_history(conn, self._end_step(conn, end, now))
        end.recorded(now)

    def _end_step(self, conn: Connection, end: StepEnd, now: datetime) -> list[dict[str, Any]]:
        """Write ``end`` in ``conn``'s transaction (compare-and-set on the step's version);
        its status history row, to insert with the transaction's others."""
        step = end.step
        changed = conn.execute(
            _FINISH_STEP,
            step.counters()
            | {
                "status": end.status.value,
                "exit_status": end.exit_status or end.status.value,
                "exit_message": end.exit_message,
                "execution_context": end.context_json,
                "end_time": now,
                "last_updated": now,
                "version": step.version + 1,
                "b_id": step.id,
                "b_version": step.version,
            },
        ).rowcount
        if changed != 1:
            raise ExecutionLost(f"step execution {step.id} ({step.step_name}) was ended elsewhere")
        if end.step_context is not None:
            self._save_step_context(conn, end.instance_id, step.step_name, end.step_context)
        return history_rows(
            [(step.job_execution_id, step.id, step.step_name, end.status)],
            at=now,
            node=self.node,
            message=end.exit_message,
        )

    def load_step_context(self, instance_id: int, step_name: str) -> dict[str, Any]:
        with self.reading() as conn:
            text_value = conn.execute(
                _LOAD_STEP_CONTEXT, {"b_instance": instance_id, "b_step": step_name}
            ).scalar_one_or_none()
        return json.loads(text_value) if text_value else {}

    @staticmethod
    def _save_step_context(
        conn: Connection, instance_id: int, step_name: str, value: dict[str, Any]
    ) -> None:
        upsert = _SAVE_STEP_CONTEXT.get(conn.dialect.name)
        if upsert is None:
            stmt = dialect_insert(conn)(step_context)
            upsert = stmt.on_conflict_do_update(
                index_elements=["instance_id", "step_name"],
                set_={"context": stmt.excluded.context},
            )
            _SAVE_STEP_CONTEXT[conn.dialect.name] = upsert
        conn.execute(
            upsert,
            {"instance_id": instance_id, "step_name": step_name, "context": canonical_json(value)},
        )


def failed_step_values(reason: str, now: datetime) -> dict[str, Any]:
    """A running step execution ended FAILED by someone other than its runner."""
    return {
        "status": BatchStatus.FAILED.value,
        "exit_message": reason,
        "end_time": now,
        "last_updated": now,
        "version": step_execution.c.version + 1,
    }
