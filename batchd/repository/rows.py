"""Turning repository rows into model records."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import RowMapping

from batchd.model import STEP_COUNTERS, BatchStatus, JobExecution, JobInstance, StepExecution


def to_instance(row: RowMapping) -> JobInstance:
    return JobInstance(
        id=row["id"],
        job_name=row["job_name"],
        job_key=row["job_key"],
        params=json.loads(row["params"]),
        create_time=row["create_time"],
    )


def to_job_execution(row: RowMapping, steps: list[StepExecution] | None = None) -> JobExecution:
    return JobExecution(
        id=row["id"],
        instance_id=row["instance_id"],
        job_name=row["job_name"],
        params=json.loads(row["params"]),
        status=BatchStatus(row["status"]),
        exit_message=row["exit_message"],
        create_time=row["create_time"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        last_updated=row["last_updated"],
        step_executions=steps or [],
        owner_host=row["owner_host"],
        owner_pid=row["owner_pid"],
        heartbeat=row["heartbeat"],
        version=row["version"],
        exit_status=row["exit_status"] or row["status"],
        attempt=row["attempt"],
    )


def to_step_execution(row: RowMapping) -> StepExecution:
    counters: dict[str, Any] = {name: row[name] for name in STEP_COUNTERS}
    return StepExecution(
        id=row["id"],
        job_execution_id=row["job_execution_id"],
        step_name=row["step_name"],
        status=BatchStatus(row["status"]),
        exit_message=row["exit_message"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        last_updated=row["last_updated"],
        execution_context=json.loads(row["execution_context"]),
        version=row["version"],
        exit_status=row["exit_status"] or row["status"],
        **counters,
    )
