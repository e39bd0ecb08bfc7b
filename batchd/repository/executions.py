"""Reading job executions, with their steps, and their job contexts (a part of
:class:`batchd.repository.SqlJobRepository`). The functions work on a passed connection, so
that the transaction that writes an execution reads it too."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, select

from batchd.errors import NoSuchJobExecution
from batchd.model import BatchStatus, JobExecution, StepExecution, canonical_json
from batchd.repository.base import RUNNING, RepositoryBase
from batchd.repository.execution_statements import (
    EXECUTION_BY_ID,
    LAST_OF_INSTANCE,
    LOAD_JOB_CONTEXT,
    SAVE_JOB_CONTEXT,
    STEPS_OF_EXECUTIONS,
)
from batchd.repository.rows import to_job_execution, to_step_execution
from batchd.repository.tables import job_execution


def with_steps(conn: Connection, rows: Sequence[Any]) -> list[JobExecution]:
    """The executions of ``rows`` with their step executions (one more query)."""
    if not rows:
        return []
    steps_by_execution: dict[int, list[StepExecution]] = {row["id"]: [] for row in rows}
    step_rows = conn.execute(STEPS_OF_EXECUTIONS, {"b_ids": list(steps_by_execution)}).mappings()
    for step_row in step_rows:
        steps_by_execution[step_row["job_execution_id"]].append(to_step_execution(step_row))
    return [to_job_execution(row, steps_by_execution[row["id"]]) for row in rows]


def last_of_instance(conn: Connection, instance_id: int) -> JobExecution | None:
    rows = conn.execute(LAST_OF_INSTANCE, {"b_instance": instance_id}).mappings().all()
    found = with_steps(conn, rows)
    return found[0] if found else None


def load_job_context(conn: Connection, execution_id: int) -> dict[str, Any]:
    text_value = conn.execute(LOAD_JOB_CONTEXT, {"b_id": execution_id}).scalar_one_or_none()
    return json.loads(text_value) if text_value else {}


def save_job_context(conn: Connection, execution_id: int, context: dict[str, Any]) -> None:
    conn.execute(SAVE_JOB_CONTEXT, {"b_id": execution_id, "context": canonical_json(context)})


class ExecutionQueries(RepositoryBase):
    """Reading job executions and their job contexts."""

    def get_execution(self, execution_id: int) -> JobExecution | None:
        with self.reading() as conn:
            rows = conn.execute(EXECUTION_BY_ID, {"b_id": execution_id}).mappings().all()
            found = with_steps(conn, rows)
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
            return last_of_instance(conn, instance_id)

    @staticmethod
    def _executions(conn: Connection, condition: Any, limit: int | None) -> list[JobExecution]:
        query = select(job_execution).where(condition).order_by(job_execution.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        return with_steps(conn, conn.execute(query).mappings().all())

    def save_job_context(self, execution_id: int, job_context: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            save_job_context(conn, execution_id, job_context)

    def load_job_context(self, execution_id: int) -> dict[str, Any]:
        with self.reading() as conn:
            return load_job_context(conn, execution_id)
