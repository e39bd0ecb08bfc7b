"""Running one partition of a partitioned step: in a thread of the job's own process, or in
a worker process or on a Dask worker that received the task pickled.

A partition's step execution is created (STARTED, with its partition context and any
checkpoint to resume from) by the job's process before the task is submitted. The worker
loads it by id, runs the chunk loop against it and records its end, so a task that is run
again (Dask reschedules the tasks of a lost worker) resumes from the last commit of the
same step execution instead of starting over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchd.engine.chunk_step import ChunkStep
from batchd.engine.listeners import CHUNK_HOOKS, Listeners
from batchd.engine.step_run import StepRun
from batchd.errors import ExecutionLost
from batchd.model import BatchStatus, StepExecution
from batchd.repository import SqlJobRepository

# How often a partition in another process asks the database whether its job was stopped.
STOP_POLL_SECONDS = 0.5


@dataclass
class PartitionTask:
    """What a worker needs to run one partition; pickled for processes and Dask."""

    step: ChunkStep
    step_execution_id: int
    job_execution_id: int
    instance_id: int
    params: Any
    # The database URL (password included) for workers in other processes; None in threads.
    database_url: str | None = None


def run_partition(task: PartitionTask) -> StepExecution:
    """Entry point of a worker process or Dask task: run the partition, return its record."""
    if task.database_url is None:
        raise ValueError("a partition run in another process needs the repository's URL")
    repository = _worker_repository(task.database_url)
    stop_check = DatabaseStopCheck(repository, task.job_execution_id)
    return execute_partition(repository, task, stop_check)


def execute_partition(
    repository: SqlJobRepository, task: PartitionTask, stop_requested: Callable[[], bool]
) -> StepExecution:
    """Run the partition's chunk loop and record its end; returns its step execution."""
    found = repository.get_step_executions([task.step_execution_id])
    if not found:
        raise ExecutionLost(f"step execution {task.step_execution_id} does not exist")
    step_execution = found[0]
    if not step_execution.status.is_running:
        return step_execution  # ended already: a rescheduled task must not run it again
    run = StepRun(
        repository=repository,
        job_execution=None,
        step_execution=step_execution,
        params=task.params,
        listeners=task.step.listeners,
        job_context={},
        step_context={},
        stop_requested=stop_requested,
    )
    outcome = task.step.execute(run)
    outcome.record(repository, step_execution, instance_id=task.instance_id, step_context=None)
    return step_execution


class DatabaseStopCheck:
    """``stop_requested`` for a partition outside the job's process: the job execution is
    STOPPING (or already ended) in the database. Asked at every chunk boundary, it reads the
    database at most every ``interval`` seconds."""

    def __init__(
        self,
        repository: SqlJobRepository,
        job_execution_id: int,
        interval: float = STOP_POLL_SECONDS,
    ) -> None:
        self.repository = repository
        self.job_execution_id = job_execution_id
        self.interval = interval
        self._next_check = 0.0
        self._stopped = False

    def __call__(self) -> bool:
        if self._stopped:
            return True
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.interval
            status = self.repository.execution_status(self.job_execution_id)
            self._stopped = status is None or status not in (
                BatchStatus.STARTING,
                BatchStatus.STARTED,
            )
        return self._stopped


# One repository (one connection pool) per database URL and worker process, shared by the
# partitions that process runs one after another or, on a Dask worker, side by side.
_repositories: dict[str, SqlJobRepository] = {}
_repositories_lock = threading.Lock()


def _worker_repository(url: str) -> SqlJobRepository:
    with _repositories_lock:
        repository = _repositories.get(url)
        if repository is None:
            repository = SqlJobRepository(url, upgrade=False)
            _repositories[url] = repository
        return repository


def chunk_listeners(listeners: Listeners) -> Listeners:
    """The listeners a partition runs with: only those with chunk or skip hooks (job and
    step hooks run in the job's process, and need not be picklable)."""
    return Listeners(
        [
            obj
            for obj in listeners.objects
            if any(callable(getattr(obj, h, None)) for h in CHUNK_HOOKS)
        ]
    )
