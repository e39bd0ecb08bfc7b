"""batchd: batch jobs with a job repository, restart from the last commit, and a daemon."""

from batchd.engine import JobBuilder, JobOperator, JobRegistry, StepBuilder
from batchd.model import (
    BatchStatus,
    ChunkContext,
    ExecutionContext,
    JobExecution,
    JobInstance,
    StepContext,
    StepExecution,
)
from batchd.repository import SqlJobRepository
from batchd.shortcuts import (
    configure,
    default_operator,
    register,
    restart,
    start,
    start_async,
    stop,
)

__version__ = "0.1.0"

__all__ = [
    "BatchStatus",
    "ChunkContext",
    "ExecutionContext",
    "JobBuilder",
    "JobExecution",
    "JobInstance",
    "JobOperator",
    "JobRegistry",
    "SqlJobRepository",
    "StepBuilder",
    "StepContext",
    "StepExecution",
    "configure",
    "default_operator",
    "register",
    "restart",
    "start",
    "start_async",
    "stop",
]
