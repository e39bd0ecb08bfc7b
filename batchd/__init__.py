"""batchd: batch jobs with a job repository, restart from the last commit, and a daemon."""

from batchd.engine import JobBuilder, JobOperator, JobRegistry, StepBuilder
from batchd.interfaces import (
    Aggregator,
    ChunkListener,
    ItemStream,
    JobListener,
    Partitioner,
    PartitionListener,
    Processor,
    Reader,
    SkipListener,
    StepListener,
    Writer,
)
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
    "Aggregator",
    "BatchStatus",
    "ChunkContext",
    "ChunkListener",
    "ExecutionContext",
    "ItemStream",
    "JobBuilder",
    "JobExecution",
    "JobInstance",
    "JobListener",
    "JobOperator",
    "JobRegistry",
    "PartitionListener",
    "Partitioner",
    "Processor",
    "Reader",
    "SkipListener",
    "SqlJobRepository",
    "StepBuilder",
    "StepContext",
    "StepExecution",
    "StepListener",
    "Writer",
    "configure",
    "default_operator",
    "register",
    "restart",
    "start",
    "start_async",
    "stop",
]
