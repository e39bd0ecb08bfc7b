"""Turning repository rows into model records."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

from sqlalchemy import RowMapping, Table

from batchd.model import BatchStatus, JobExecution, JobInstance, StepExecution
from batchd.repository.tables import job_execution, job_instance, step_execution


def shared_columns(record: type, table: Table, *special: str) -> tuple[str, ...]:
    """The columns of ``table`` that the dataclass ``record`` has fields of the same name
    for, except the ``special`` ones, which are converted."""
    return tuple(f.name for f in fields(record) if f.name in table.c and f.name not in special)


_EXECUTION_COLUMNS = shared_columns(JobExecution, job_execution, "params", "status", "exit_status")
_STEP_COLUMNS = shared_columns(
    StepExecution, step_execution, "status", "execution_context", "exit_status"
)


def same_named(row: Mapping[Any, Any], names: Iterable[str]) -> dict[str, Any]:
    """The values of ``row``'s columns ``names``, for the record fields of the same names."""
    return {name: row[name] for name in names}


def to_instance(row: RowMapping) -> JobInstance:
    return JobInstance(
        params=json.loads(row["params"]),
        **same_named(row, shared_columns(JobInstance, job_instance, "params")),
    )


def to_job_execution(row: RowMapping, steps: list[StepExecution] | None = None) -> JobExecution:
    return JobExecution(
        params=json.loads(row["params"]),
        status=BatchStatus(row["status"]),
        step_executions=steps or [],
        exit_status=row["exit_status"] or row["status"],
        **same_named(row, _EXECUTION_COLUMNS),
    )


def to_step_execution(row: RowMapping) -> StepExecution:
    return StepExecution(
        status=BatchStatus(row["status"]),
        execution_context=json.loads(row["execution_context"]),
        exit_status=row["exit_status"] or row["status"],
        **same_named(row, _STEP_COLUMNS),
    )
