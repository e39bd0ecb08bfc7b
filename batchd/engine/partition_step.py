"""Partitioned steps: one chunk step's work split into partitions that run side by side.

The partitioned step's own step execution keeps the plan (the partition contexts) as its
checkpoint; every partition is a step execution of its own, ``"<step>:%04d" % index``, with
its own counters and checkpoint. A restart reuses the plan, skips the partitions that
COMPLETED since it was made and resumes the others from their checkpoints.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.engine import make_url

from batchd import failpoints
from batchd.engine.chunk_step import ChunkStep
from batchd.engine.listeners import Listeners
from batchd.engine.partition_executors import PartitionExecutor, open_executor
from batchd.engine.partition_worker import (
    PartitionTask,
    chunk_listeners,
    execute_partition,
    run_partition,
)
from batchd.engine.step_run import StepOutcome, StepRun, describe_error
from batchd.errors import PartitionError as PartitionError
from batchd.errors import PartitionFailed as PartitionFailed
from batchd.interfaces import AggregateFunction, Aggregator, Partitioner, PartitionFunction
from batchd.model import (
    PARTITION_KEY,
    PLAN_KEY,
    STEP_COUNTERS,
    BatchStatus,
    ExecutionContext,
    StepExecution,
    canonical_json,
)
from batchd.repository import SqlJobRepository

log = logging.getLogger(__name__)

# The partitioned step's checkpoint holds the plan (PLAN_KEY) and the id of the step
# execution that made it (partitions of that plan have higher ids, so older runs of the
# same names are ignored).
PLAN_ORIGIN_KEY = "batchd.partitions_since"

AFTER_PARTITION_PLAN = failpoints.declare(
    "engine.after_partition_plan",
    "the plan is the partitioned step's checkpoint, no partition exists yet: a restart reuses "
    "the plan",
)
AFTER_PARTITIONS_CREATED = failpoints.declare(
    "engine.after_partitions_created",
    "the partitions' step executions are STARTED and none runs: recover() marks them FAILED "
    "with the execution, and a restart resumes each from its checkpoint",
)
AFTER_PARTITIONS_ENDED = failpoints.declare(
    "engine.after_partitions_ended",
    "every partition recorded its end, the aggregator has not run: a restart runs no "
    "partition again and aggregates",
)
AFTER_AGGREGATE = failpoints.declare(
    "engine.after_aggregate",
    "the aggregator ran (its file published, the parts removed) but the partitioned step's "
    "end is not recorded: a restart runs the aggregator again, which finds its work done",
)


@dataclass(eq=False)  # hashable by identity: steps are keys of a job's flow
class PartitionStep:
    """A chunk step (``worker``) run once per partition on ``executor``.

    ``partitioner`` is an object with ``partition(n, params) -> list[dict]`` or such a
    callable; ``aggregator`` an object with ``aggregate(step_execution, partitions)`` or
    such a callable, run once after every partition COMPLETED. ``executor`` is
    ``"threads"``, ``"processes"``, or any ``concurrent.futures.Executor`` or Dask
    ``distributed.Client``.
    """

    name: str
    worker: ChunkStep
    partitioner: Partitioner | PartitionFunction
    partitions: int
    aggregator: Aggregator | AggregateFunction | None = None
    executor: Any = "threads"
    workers: int | None = None
    listeners: Listeners = field(default_factory=Listeners)
    allow_start_if_complete: bool = False
    start_limit: int | None = None

    def partition_name(self, index: int) -> str:
        return f"{self.name}:{index:04d}"

    def execute(self, run: StepRun) -> StepOutcome:
        run.listeners.call("before_partition", run.step_execution)
        plan, origin = self._plan(run)
        checkpoint = {PLAN_KEY: plan, PLAN_ORIGIN_KEY: origin}
        # Saved before any partition starts, so a restart after a crash finds the plan.
        with run.repository.chunk_transaction(run.step_execution) as connection:
            run.repository.commit_chunk(connection, run.step_execution, canonical_json(checkpoint))
        run.step_execution.execution_context = checkpoint
        failpoints.failpoint(AFTER_PARTITION_PLAN)

        last_runs = self._last_runs(run, len(plan), origin)
        latest = {i: s for i, s in last_runs.items() if s.status == BatchStatus.COMPLETED}
        if latest:
            log.info(
                "step %s: %d of %d partitions COMPLETED before, not run again",
                self.name,
                len(latest),
                len(plan),
            )
        pending = [index for index in range(len(plan)) if index not in latest]
        executor = open_executor(self.executor, len(pending) or 1, self.workers, self.name)
        try:
            if not executor.in_process:
                self._check_picklable(executor, run)
            started = self._create_partitions(run, plan, pending, last_runs)
            failpoints.failpoint(AFTER_PARTITIONS_CREATED)
            errors = self._run(executor, run, started)
        finally:
            executor.close()

        failpoints.failpoint(AFTER_PARTITIONS_ENDED)
        ended = run.repository.get_step_executions([s.id for s in started.values()])
        for step_execution in ended:
            latest[_index_of(step_execution)] = step_execution
        self._replace_in_job_execution(run, ended)
        self._sum_counters(run.step_execution, ended)
        partitions = [latest[index] for index in range(len(plan))]
        status = BatchStatus.worst(p.status for p in partitions)
        for partition in ended:
            if partition.status == BatchStatus.FAILED:
                error = errors.get(partition.id) or PartitionFailed(partition.exit_message or "")
                run.listeners.call("on_partition_error", partition, error)
        run.listeners.call("after_partition", run.step_execution, partitions)
        if status == BatchStatus.COMPLETED and self.aggregator is not None:
            self._aggregate(run, partitions, checkpoint)
            failpoints.failpoint(AFTER_AGGREGATE)
        return StepOutcome(status, checkpoint, _summary(partitions, status))

    # ------------------------------------------------------------------ the plan

    def _plan(self, run: StepRun) -> tuple[list[dict[str, Any]], int]:
        """The partition contexts, and the id of the step execution that made them: the
        plan being resumed, or a new one from the partitioner."""
        resumed = run.step_execution.execution_context
        if isinstance(resumed.get(PLAN_KEY), list):
            return resumed[PLAN_KEY], int(resumed[PLAN_ORIGIN_KEY])
        partitioner = self.partitioner
        partition = partitioner.partition if isinstance(partitioner, Partitioner) else partitioner
        contexts = partition(self.partitions, run.params)
        return _checked_plan(self.name, self.partitioner, contexts), run.step_execution.id

    def _last_runs(self, run: StepRun, count: int, origin: int) -> dict[int, StepExecution]:
        """The newest step execution of each partition of the plan made by ``origin``."""
        names = [self.partition_name(index) for index in range(count)]
        last = run.repository.last_step_executions(_instance_id(run), names, after_id=origin)
        return {index: last[name] for index, name in enumerate(names) if name in last}

    def _create_partitions(
        self,
        run: StepRun,
        plan: list[dict[str, Any]],
        pending: list[int],
        last_runs: dict[int, StepExecution],
    ) -> dict[int, StepExecution]:
        """A STARTED step execution per partition to run, resuming from its checkpoint."""
        job_execution = run.job_execution
        assert job_execution is not None  # the partitioned step runs in the job's process
        contexts = [
            last_runs[index].execution_context
            if index in last_runs
            else {PARTITION_KEY: plan[index]}
            for index in pending
        ]
        created = run.repository.create_step_executions(
            job_execution,
            [
                (self.partition_name(index), context)
                for index, context in zip(pending, contexts, strict=True)
            ],
        )
        job_execution.step_executions.extend(created)
        return dict(zip(pending, created, strict=True))

    # ------------------------------------------------------------------ running

    def _task(self, run: StepRun, step_execution: StepExecution, url: str | None) -> PartitionTask:
        listeners = run.listeners if url is None else chunk_listeners(run.listeners)
        return PartitionTask(
            step=replace(self.worker, name=step_execution.step_name, listeners=listeners),
            step_execution_id=step_execution.id,
            job_execution_id=step_execution.job_execution_id,
            instance_id=_instance_id(run),
            params=run.params,
            database_url=url,
        )

    def _run(
        self, executor: PartitionExecutor, run: StepRun, started: dict[int, StepExecution]
    ) -> dict[int, BaseException]:
        """Run every partition to its end; returns the errors of those whose worker failed."""
        url = None if executor.in_process else _worker_url(run.repository)
        futures: dict[Future[StepExecution], StepExecution] = {}
        errors: dict[int, BaseException] = {}
        for step_execution in started.values():
            task = self._task(run, step_execution, url)
            try:
                if executor.in_process:
                    future = executor.executor.submit(
                        execute_partition, run.repository, task, run.stop_requested
                    )
                else:
                    future = executor.executor.submit(run_partition, task)
            except Exception as submit_error:  # e.g. the executor was shut down
                errors[step_execution.id] = submit_error
                self._fail(run.repository, step_execution, executor, submit_error)
                continue
            futures[future] = step_execution
        # A partition that fails does not stop its siblings: wait for all of them.
        wait(futures)
        for future, step_execution in futures.items():
            error = future.exception()
            if error is not None:
                errors[step_execution.id] = error
                self._fail(run.repository, step_execution, executor, error)
            elif future.result().status.is_running:
                self._fail(run.repository, step_execution, executor, None)
        return errors

    @staticmethod
    def _fail(
        repository: SqlJobRepository,
        step_execution: StepExecution,
        executor: PartitionExecutor,
        error: BaseException | None,
    ) -> None:
        """Record a partition whose worker did not record its end as FAILED: it never
        counts as done unless it said so itself."""
        if error is None:
            reason = "its worker returned without recording the partition's end"
        else:
            reason = describe_error(error)
        message = (
            f"partition {step_execution.step_name} did not finish on {executor.description}: "
            f"{reason}"
        )
        if repository.fail_step_if_running(step_execution.id, message):
            log.error("%s", message.splitlines()[0])

    def _check_picklable(self, executor: PartitionExecutor, run: StepRun) -> None:
        parts = {
            "reader": self.worker.reader,
            "processor": self.worker.processor,
            "writer": self.worker.writer,
            "job parameters": run.params,
        }
        parts |= {f"listener {obj!r}": obj for obj in chunk_listeners(run.listeners).objects}
        for what, value in parts.items():
            try:
                executor.dumps(value)
            except Exception as error:
                raise PartitionError(
                    f"step {self.name!r} runs its partitions on {executor.description}, "
                    f"which receive a pickled copy of the step, but its {what} "
                    f"{type(value).__name__} cannot be pickled: {error}"
                ) from error

    # ------------------------------------------------------------------ the end

    def _aggregate(
        self, run: StepRun, partitions: list[StepExecution], checkpoint: dict[str, Any]
    ) -> None:
        aggregator = copy.copy(self.aggregator)
        ctx = ExecutionContext(checkpoint, params=run.params)
        open_ = getattr(aggregator, "open", None)
        if callable(open_):
            open_(ctx)
        try:
            aggregate = aggregator.aggregate if isinstance(aggregator, Aggregator) else aggregator
            assert aggregate is not None  # called only for a step that has an aggregator
            aggregate(run.step_execution, partitions)
        finally:
            close = getattr(aggregator, "close", None)
            if callable(close):
                close()

    @staticmethod
    def _sum_counters(parent: StepExecution, partitions: Sequence[StepExecution]) -> None:
        for counter in STEP_COUNTERS:
            setattr(parent, counter, sum(getattr(p, counter) for p in partitions))

    @staticmethod
    def _replace_in_job_execution(run: StepRun, ended: list[StepExecution]) -> None:
        """The job execution's step list shows the partitions as they ended."""
        if run.job_execution is None:
            return
        by_id = {s.id: s for s in ended}
        steps = run.job_execution.step_executions
        steps[:] = [by_id.get(s.id, s) for s in steps]


def _checked_plan(step: str, partitioner: Any, contexts: Any) -> list[dict[str, Any]]:
    """The partitioner's result as a plan: a non-empty list of JSON-serialisable dicts,
    each with its ``index``."""
    if not isinstance(contexts, list | tuple) or not contexts:
        raise PartitionError(
            f"partitioner {partitioner!r} of step {step!r} returned no partitions "
            f"({contexts!r}): it must return a non-empty list of dicts"
        )
    plan = []
    for index, context in enumerate(contexts):
        if not isinstance(context, dict):
            raise PartitionError(
                f"partitioner {partitioner!r} of step {step!r} returned {context!r} as "
                f"partition {index}: each partition's context must be a dict"
            )
        try:
            plan.append(json.loads(canonical_json({"index": index} | context)))
        except (TypeError, ValueError) as error:
            raise PartitionError(
                f"partition {index} of step {step!r} is not JSON-serialisable: {error}"
            ) from None
    return plan


def _index_of(step_execution: StepExecution) -> int:
    return int(step_execution.step_name.rsplit(":", 1)[1])


def _instance_id(run: StepRun) -> int:
    assert run.job_execution is not None
    return run.job_execution.instance_id


def _worker_url(repository: SqlJobRepository) -> str:
    """The repository's URL for a worker in another process: password kept, a SQLite path
    made absolute (a worker may start in another directory)."""
    url = repository.engine.url
    if url.get_backend_name() == "sqlite" and url.database:
        url = url.set(database=os.path.abspath(url.database))
    return make_url(url).render_as_string(hide_password=False)


def _summary(partitions: list[StepExecution], status: BatchStatus) -> str | None:
    """The parent's exit message: which partitions did not complete, and why."""
    if status == BatchStatus.COMPLETED:
        return None
    return "; ".join(
        f"{p.step_name} {p.status.value}: {_first_line(p.exit_message)}"
        for p in partitions
        if p.status != BatchStatus.COMPLETED
    )


def _first_line(text: str | None) -> str:
    return (text or "").split("\n", 1)[0]
