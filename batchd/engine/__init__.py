"""The engine: builders, registry, steps, the job runner and the operator."""

from batchd.engine.builders import JobBuilder, StepBuilder
from batchd.engine.chunk_step import ChunkStep
from batchd.engine.faults import FaultPolicy, SkipLimitExceeded
from batchd.engine.job import Job, Step
from batchd.engine.launch import parse_identifier
from batchd.engine.operator import JobOperator
from batchd.engine.registry import JobRegistry
from batchd.engine.tasklet_step import TaskletStep

__all__ = [
    "ChunkStep",
    "FaultPolicy",
    "Job",
    "JobBuilder",
    "JobOperator",
    "JobRegistry",
    "SkipLimitExceeded",
    "Step",
    "StepBuilder",
    "TaskletStep",
    "parse_identifier",
]
