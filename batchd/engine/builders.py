"""Fluent builders for steps and jobs (GoBatch's style)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from batchd.engine.chunk_step import ChunkStep
from batchd.engine.faults import ErrorTypes, FaultPolicy
from batchd.engine.flow import Flow, build_flow
from batchd.engine.job import Incrementer, Job, Step
from batchd.engine.listeners import Listeners
from batchd.engine.partition_executors import check_executor_spec
from batchd.engine.partition_step import PartitionStep
from batchd.engine.tasklet_step import Tasklet, TaskletStep
from batchd.interfaces import (
    AggregateFunction,
    Aggregator,
    Partitioner,
    PartitionFunction,
    ProcessFunction,
    Processor,
    Reader,
    WriteFunction,
    Writer,
)


def _error_types(on: type[BaseException] | Iterable[type[BaseException]], what: str) -> ErrorTypes:
    types = (on,) if isinstance(on, type) else tuple(on)
    for error_type in types:
        if not (isinstance(error_type, type) and issubclass(error_type, BaseException)):
            raise TypeError(f"{what}(on=...) takes exception classes, not {error_type!r}")
    return types


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a {what} needs a non-empty name, not {name!r}")
    return name


class StepBuilder:
    """Builds a tasklet step (``.tasklet(fn)``) or a chunk step (``.reader().writer()``),
    partitioned with ``.partitioner(p, partitions=N)``."""

    def __init__(self, name: str) -> None:
        self._name = _check_name(name, "step")
        self._tasklet: Tasklet | None = None
        self._reader: Reader[Any] | None = None
        self._processor: Processor[Any, Any] | ProcessFunction | None = None
        self._fan_out = False
        self._writer: Writer[Any] | WriteFunction | None = None
        self._chunk_size = 100
        self._faults = FaultPolicy()
        self._listeners: list[object] = []
        self._allow_start_if_complete = False
        self._start_limit: int | None = None
        self._partitioner: Partitioner | PartitionFunction | None = None
        self._partitions = 0
        self._aggregator: Aggregator | AggregateFunction | None = None
        self._executor: Any = None
        self._workers: int | None = None

    def tasklet(self, fn: Tasklet) -> StepBuilder:
        """``fn(ctx: StepContext) -> None`` runs once per execution."""
        if not callable(fn):
            raise TypeError(f"tasklet must be callable, not {fn!r}")
        self._tasklet = fn
        return self

    def reader(self, reader: Reader[Any]) -> StepBuilder:
        """An object with ``read() -> item | None`` (None ends the step): a
        :class:`batchd.interfaces.Reader`, and optionally an ItemStream."""
        if not callable(getattr(reader, "read", None)):
            raise TypeError(f"a reader needs a read() method: {reader!r}")
        self._reader = reader
        return self

    def processor(
        self, processor: Processor[Any, Any] | ProcessFunction, *, fan_out: bool = False
    ) -> StepBuilder:
        """A callable or an object with ``process(item) -> item | None`` (None filters): a
        :class:`batchd.interfaces.Processor`. With ``fan_out=True`` it returns a list of
        items for each item (an empty list filters it); the writer gets them flattened, and
        ``write_count`` counts them."""
        if not (callable(processor) or callable(getattr(processor, "process", None))):
            raise TypeError(f"a processor must be callable or have process(): {processor!r}")
        self._processor = processor
        self._fan_out = bool(fan_out)
        return self

    def writer(self, writer: Writer[Any] | WriteFunction) -> StepBuilder:
        """A callable or an object with ``write(items: list)``: a
        :class:`batchd.interfaces.Writer`, and optionally an ItemStream with ``complete``."""
        if not (callable(writer) or callable(getattr(writer, "write", None))):
            raise TypeError(f"a writer must be callable or have write(): {writer!r}")
        self._writer = writer
        return self

    def chunk_size(self, size: int) -> StepBuilder:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"chunk_size must be a positive integer, not {size!r}")
        self._chunk_size = size
        return self

    def retry(
        self,
        *,
        on: type[BaseException] | Iterable[type[BaseException]],
        limit: int,
        backoff: float = 0.0,
    ) -> StepBuilder:
        """Retry an item (or a chunk's write) ``limit`` more times on these errors,
        ``backoff`` seconds apart."""
        if limit < 0 or backoff < 0:
            raise ValueError("retry limit and backoff must not be negative")
        self._faults = FaultPolicy(
            retry_on=_error_types(on, "retry"),
            retry_limit=limit,
            backoff=backoff,
            skip_on=self._faults.skip_on,
            skip_limit=self._faults.skip_limit,
        )
        return self

    def skip(
        self, *, on: type[BaseException] | Iterable[type[BaseException]], limit: int
    ) -> StepBuilder:
        """Skip items whose read, process or write raises these errors; past ``limit``
        skipped items the step fails."""
        if limit < 0:
            raise ValueError("skip limit must not be negative")
        self._faults = FaultPolicy(
            retry_on=self._faults.retry_on,
            retry_limit=self._faults.retry_limit,
            backoff=self._faults.backoff,
            skip_on=_error_types(on, "skip"),
            skip_limit=limit,
        )
        return self

    def listener(self, listener: object) -> StepBuilder:
        """Register every step, chunk, skip and partition hook ``listener`` has (see
        :mod:`batchd.interfaces`: StepListener, ChunkListener, SkipListener and
        PartitionListener)."""
        self._listeners.append(listener)
        return self

    def allow_start_if_complete(self, allow: bool = True) -> StepBuilder:
        """Run this step again on restart even when it completed before."""
        self._allow_start_if_complete = bool(allow)
        return self

    def start_limit(self, limit: int | None) -> StepBuilder:
        """How often this step may be started for one job instance (None: unlimited)."""
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"start_limit must be a positive integer or None, not {limit!r}")
        self._start_limit = limit
        return self

    def partitioner(
        self, partitioner: Partitioner | PartitionFunction, *, partitions: int | None = None
    ) -> StepBuilder:
        """Split the step into partitions: ``partitioner.partition(n, params)`` (or
        ``partitioner(n, params)``) returns one context dict per partition, which its copy
        of the reader and writer find in ``ctx.partition``. ``partitions`` is the ``n``
        asked for (default: the number of CPUs)."""
        call = getattr(partitioner, "partition", partitioner)
        if not callable(call):
            raise TypeError(
                f"a partitioner must be callable or have partition(n, params): {partitioner!r}"
            )
        count = partitions if partitions is not None else (os.cpu_count() or 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"partitions must be a positive integer, not {partitions!r}")
        self._partitioner = partitioner
        self._partitions = count
        return self

    def aggregator(self, aggregator: Aggregator | AggregateFunction) -> StepBuilder:
        """Run ``aggregator.aggregate(step_execution, partitions)`` (or
        ``aggregator(step_execution, partitions)``) once, after every partition COMPLETED."""
        call = getattr(aggregator, "aggregate", aggregator)
        if not callable(call):
            raise TypeError(
                f"an aggregator must be callable or have aggregate(step_execution, "
                f"partitions): {aggregator!r}"
            )
        self._aggregator = aggregator
        return self

    def executor(self, executor: Any, *, workers: int | None = None) -> StepBuilder:
        """Where partitions run: ``"threads"`` (the default), ``"processes"`` (spawned
        worker processes, which receive pickled copies of the reader, processor and
        writer), any ``concurrent.futures.Executor``, or a Dask ``distributed.Client``.
        ``workers`` caps the threads or processes (default: one per partition, at most
        the number of CPUs + 4 threads, or one process per CPU)."""
        check_executor_spec(executor)
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer, not {workers!r}")
        self._executor = executor
        self._workers = workers
        return self

    def build(self) -> Step:
        listeners = Listeners(self._listeners)
        common: dict[str, Any] = {
            "name": self._name,
            "listeners": listeners,
            "allow_start_if_complete": self._allow_start_if_complete,
            "start_limit": self._start_limit,
        }
        if self._partitioner is None and (
            self._aggregator is not None or self._executor is not None
        ):
            raise ValueError(
                f"step {self._name!r} has an aggregator or executor but no partitioner"
            )
        if self._tasklet is not None:
            if self._reader is not None or self._writer is not None:
                raise ValueError(f"step {self._name!r} has a tasklet and a reader/writer")
            if self._partitioner is not None:
                raise ValueError(
                    f"step {self._name!r}: only chunk steps (reader and writer) can be partitioned"
                )
            return TaskletStep(tasklet=self._tasklet, **common)
        if self._reader is None or self._writer is None:
            raise ValueError(f"step {self._name!r} needs a tasklet, or a reader and a writer")
        chunk_step = ChunkStep(
            reader=self._reader,
            processor=self._processor,
            writer=self._writer,
            fan_out=self._fan_out,
            chunk_size=self._chunk_size,
            faults=self._faults,
            **common,
        )
        if self._partitioner is None:
            return chunk_step
        return PartitionStep(
            worker=chunk_step,
            partitioner=self._partitioner,
            partitions=self._partitions,
            aggregator=self._aggregator,
            executor=self._executor or "threads",
            workers=self._workers,
            **common,
        )


class JobBuilder:
    """Builds a :class:`Job` from steps that run in order."""

    def __init__(self, name: str) -> None:
        self._name = _check_name(name, "job")
        self._steps: list[Step] = []
        self._params_model: type[BaseModel] | None = None
        self._non_identifying: set[str] = set()
        self._listeners: list[object] = []
        self._restartable = True
        self._flow: tuple[Any, Mapping[Any, Mapping[str, Any]]] | None = None
        self._incrementer: Incrementer | None = None
        self._permanent_errors: ErrorTypes = ()

    def step(self, step: Step) -> JobBuilder:
        if any(existing.name == step.name for existing in self._steps):
            raise ValueError(f"job {self._name!r} already has a step named {step.name!r}")
        self._steps.append(step)
        return self

    def flow(self, *, start: Any, transitions: Mapping[Any, Mapping[str, Any]]) -> JobBuilder:
        """Route on exit statuses (Spring's FlowBuilder): ``transitions`` maps each step or
        :class:`~batchd.Decision` (or its name) to ``{pattern: target}``, a target being a
        step, a decision, a name, ``END``, ``FAIL`` or ``stop_and_restart(step)``. A step
        without transitions ends the job with its own status. Checked by :meth:`build`."""
        if self._steps:
            raise ValueError(f"job {self._name!r}: use .step() or .flow(), not both")
        self._flow = (start, transitions)
        return self

    def incrementer(self, incrementer: Incrementer | None = None) -> JobBuilder:
        """What ``op.start_next`` / ``batchd ctl start JOB --next`` adds to the parameters
        (Spring's JobParametersIncrementer): ``incrementer(previous_params) -> dict``, given
        the parameters of the job's newest execution (None if it never ran). The default,
        :class:`RunIdIncrementer`, gives ``{"run_id": previous run_id + 1}``."""
        chosen = incrementer if incrementer is not None else RunIdIncrementer()
        if not callable(chosen):
            raise TypeError(f"an incrementer must be callable, not {chosen!r}")
        self._incrementer = chosen
        return self

    def permanent_errors(self, *errors: type[BaseException]) -> JobBuilder:
        """Errors that fail the job for good (as :class:`batchd.errors.PermanentError`
        does): its exit status is ``FAILED_PERMANENT`` and the daemon's automatic retries
        do not restart it."""
        self._permanent_errors = _error_types(errors, "permanent_errors")
        return self

    def params_model(self, model: type[BaseModel]) -> JobBuilder:
        """Validate and type parameters with this pydantic model before anything runs."""
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"params_model takes a pydantic model class, not {model!r}")
        self._params_model = model
        return self

    def non_identifying(self, *keys: str) -> JobBuilder:
        """Parameters that do not identify the instance (e.g. a run id)."""
        self._non_identifying.update(keys)
        return self

    def listener(self, listener: object) -> JobBuilder:
        """Register job hooks, and step/chunk/skip/partition hooks for every step (see
        :mod:`batchd.interfaces`: JobListener and the step listeners)."""
        self._listeners.append(listener)
        return self

    def restartable(self, restartable: bool = True) -> JobBuilder:
        self._restartable = bool(restartable)
        return self

    def build(self) -> Job:
        flow: Flow | None = None
        steps: Sequence[Step] = tuple(self._steps)
        if self._flow is not None:
            if self._steps:
                raise ValueError(f"job {self._name!r}: use .step() or .flow(), not both")
            flow = build_flow(self._name, *self._flow)
            steps = tuple(flow.steps())
        if not steps:
            raise ValueError(f"job {self._name!r} has no steps")
        if self._incrementer is not None and "run_id" in self._non_identifying:
            raise ValueError(f"job {self._name!r}: run_id identifies a job with an incrementer")
        return Job(
            name=self._name,
            steps=steps,
            flow=flow,
            incrementer=self._incrementer,
            permanent_errors=self._permanent_errors,
            params_model=self._params_model,
            non_identifying=frozenset(self._non_identifying),
            listeners=Listeners(self._listeners),
            restartable=self._restartable,
        )


class RunIdIncrementer:
    """The default incrementer (Spring's RunIdIncrementer): ``run_id`` one above the newest
    execution's (1 when there is none). ``key`` names another parameter."""

    def __init__(self, key: str = "run_id") -> None:
        self.key = key

    def __call__(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        last = (previous or {}).get(self.key, 0)
        try:
            number = int(last)
        except (TypeError, ValueError):
            raise ValueError(f"{self.key}={last!r} of the last execution is not a number") from None
        return {self.key: number + 1}
