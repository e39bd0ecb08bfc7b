"""The SQL of the executions part of the job repository, in named constants.

Every statement a run uses is built once with bound parameters: constructing a Core statement
and its cache key cost more than executing it on SQLite. An UPDATE's SET clause comes from the
parameters' column names.
"""

from __future__ import annotations

from sqlalchemy import bindparam, insert, select, update

from batchd.repository.tables import (
    job_execution,
    job_execution_context,
    step_execution,
)

INSERT_EXECUTION = insert(job_execution)
INSERT_JOB_CONTEXT = insert(job_execution_context)
EXECUTION_BY_ID = select(job_execution).where(job_execution.c.id == bindparam("b_id"))
LAST_OF_INSTANCE = (
    select(job_execution)
    .where(job_execution.c.instance_id == bindparam("b_instance"))
    .order_by(job_execution.c.id.desc())
    .limit(1)
)
STEPS_OF_EXECUTIONS = (
    select(step_execution)
    .where(step_execution.c.job_execution_id.in_(bindparam("b_ids", expanding=True)))
    .order_by(step_execution.c.id)
)
UPDATE_IF_UNCHANGED = update(job_execution).where(
    job_execution.c.id == bindparam("b_id"),
    job_execution.c.version == bindparam("b_version"),
    job_execution.c.status.in_(bindparam("b_statuses", expanding=True)),
)
SAVE_JOB_CONTEXT = update(job_execution_context).where(
    job_execution_context.c.job_execution_id == bindparam("b_id")
)
LOAD_JOB_CONTEXT = select(job_execution_context.c.context).where(
    job_execution_context.c.job_execution_id == bindparam("b_id")
)
