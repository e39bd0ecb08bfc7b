"""batchd: batch jobs with a job repository, restart from the last commit, and a daemon.

The engine, the repository and the shortcuts are imported when first used, so that
``batchd ctl`` (which imports this package) does not pay for SQLAlchemy and pydantic.
"""

from typing import TYPE_CHECKING

from batchd.lazy import lazy_attributes

if TYPE_CHECKING:
    from batchd.engine import JobBuilder, JobOperator, JobRegistry, StepBuilder
    from batchd.engine.builders import RunIdIncrementer
    from batchd.engine.flow import END, FAIL, Decision, stop_and_restart
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

# The Protocols and the records too: ``batchd ctl`` imports this package and needs neither.
_LAZY = {
    **dict.fromkeys(
        (
            "Aggregator",
            "ChunkListener",
            "ItemStream",
            "JobListener",
            "Partitioner",
            "PartitionListener",
            "Processor",
            "Reader",
            "SkipListener",
            "StepListener",
            "Writer",
        ),
        "batchd.interfaces",
    ),
    **dict.fromkeys(
        (
            "BatchStatus",
            "ChunkContext",
            "ExecutionContext",
            "JobExecution",
            "JobInstance",
            "StepContext",
            "StepExecution",
        ),
        "batchd.model",
    ),
    "JobBuilder": "batchd.engine",
    **dict.fromkeys(("END", "FAIL", "Decision", "stop_and_restart"), "batchd.engine.flow"),
    "RunIdIncrementer": "batchd.engine.builders",
    "JobOperator": "batchd.engine",
    "JobRegistry": "batchd.engine",
    "StepBuilder": "batchd.engine",
    "SqlJobRepository": "batchd.repository",
    **dict.fromkeys(
        ("configure", "default_operator", "register", "restart", "start", "start_async", "stop"),
        "batchd.shortcuts",
    ),
}


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = [
    "END",
    "FAIL",
    "Aggregator",
    "BatchStatus",
    "ChunkContext",
    "ChunkListener",
    "Decision",
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
    "RunIdIncrementer",
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
    "stop_and_restart",
]
