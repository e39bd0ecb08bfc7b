"""Records of job instances and executions as the repository stores them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from batchd.model.status import BatchStatus

STEP_COUNTERS = (
    "read_count",
    "write_count",
    "filter_count",
    "commit_count",
    "rollback_count",
    "read_skip_count",
    "process_skip_count",
    "write_skip_count",
)

# Where a partition's step execution keeps its partition context (beside the checkpoints
# of its reader and writer, whose keys all start with their own name).
PARTITION_KEY = "batchd.partition"
# Where a partitioned step keeps its plan: the list of its partitions' contexts.
PLAN_KEY = "batchd.partitions"


@dataclass(frozen=True)
class JobInstance:
    """A job with one set of identifying parameters (for instance one business date)."""

    id: int
    job_name: str
    job_key: str
    params: dict[str, Any]
    create_time: datetime


@dataclass
class StepExecution:
    """One run of one step inside a job execution, with its counters."""

    id: int
    job_execution_id: int
    step_name: str
    status: BatchStatus
    read_count: int = 0
    write_count: int = 0
    filter_count: int = 0
    commit_count: int = 0
    rollback_count: int = 0
    read_skip_count: int = 0
    process_skip_count: int = 0
    write_skip_count: int = 0
    exit_message: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    last_updated: datetime | None = None
    execution_context: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    # What a flow routes on: the status's name unless the step set another (DESIGN §8).
    exit_status: str | None = None
    # While the step runs, for its listeners: the execution's job context and the step's
    # per-instance step context (kept as a tasklet's are; not part of the record).
    job_context: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    step_context: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def skip_count(self) -> int:
        return self.read_skip_count + self.process_skip_count + self.write_skip_count

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in STEP_COUNTERS}

    @property
    def partition(self) -> dict[str, Any] | None:
        """The partition context of a partition's step execution (None for other steps)."""
        value = self.execution_context.get(PARTITION_KEY)
        return value if isinstance(value, dict) else None

    @property
    def is_partitioned(self) -> bool:
        """A partitioned step's own execution: its counters are its partitions' sums."""
        return isinstance(self.execution_context.get(PLAN_KEY), list)

    @property
    def base_step_name(self) -> str:
        """The step's name: a partition's ``"<step>:0003"`` without the partition number."""
        return self.step_name.rsplit(":", 1)[0] if self.partition is not None else self.step_name


@dataclass
class JobExecution:
    """One attempt to run a job instance."""

    id: int
    instance_id: int
    job_name: str
    params: dict[str, Any]
    status: BatchStatus
    exit_message: str | None = None
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    last_updated: datetime | None = None
    step_executions: list[StepExecution] = field(default_factory=list)
    owner_host: str | None = None
    owner_pid: int | None = None
    heartbeat: datetime | None = None
    version: int = 0
    # The status's name, or how the job's flow ended (the last step's exit status).
    exit_status: str | None = None
    # 1 for the instance's first execution, one more for each restart (retries count it).
    attempt: int = 1

    @property
    def is_running(self) -> bool:
        return self.status.is_running

    @property
    def node(self) -> str | None:
        """Where the execution ran or runs (its owner's host name)."""
        return self.owner_host
