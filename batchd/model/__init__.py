"""The data model of batchd: statuses, parameters, records and contexts (no I/O)."""

from batchd.model.context import ChunkContext, ExecutionContext, StepContext
from batchd.model.params import (
    JobParameters,
    RawParams,
    build_parameters,
    canonical_json,
    job_key,
)
from batchd.model.records import (
    PARTITION_KEY,
    PLAN_KEY,
    STEP_COUNTERS,
    JobExecution,
    JobInstance,
    StepExecution,
)
from batchd.model.status import RESTARTABLE_STATUSES, RUNNING_STATUSES, BatchStatus
from batchd.model.transaction import (
    ChunkTransaction,
    current_chunk_transaction,
    database_identity,
)

__all__ = [
    "PARTITION_KEY",
    "PLAN_KEY",
    "RESTARTABLE_STATUSES",
    "RUNNING_STATUSES",
    "STEP_COUNTERS",
    "BatchStatus",
    "ChunkContext",
    "ChunkTransaction",
    "ExecutionContext",
    "JobExecution",
    "JobInstance",
    "JobParameters",
    "RawParams",
    "StepContext",
    "StepExecution",
    "build_parameters",
    "canonical_json",
    "current_chunk_transaction",
    "database_identity",
    "job_key",
]
