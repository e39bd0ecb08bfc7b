"""The interfaces a user implements: readers, processors, writers, streams, listeners and the
daemon's observers, as :class:`typing.Protocol` classes.

batchd stays duck-typed: any object with the right methods works, without inheriting from
anything, and a listener needs only the hooks it cares about. The Protocols say what those
methods are, so that ``mypy --strict`` checks user code against them (the builders take them
as argument types), and they may also be subclassed: a subclass of a listener or observer
Protocol inherits a no-op for every hook it does not define, a subclass of
:class:`Reader`, :class:`Processor`, :class:`Writer`, :class:`Partitioner` or
:class:`Aggregator` must define its one method. Every one is ``runtime_checkable``.

Each Protocol lists the hooks the engine looks for by name: :data:`JOB_HOOKS` and the other
tuples below are derived from them, so the engine and these docs cannot drift apart.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from batchd.model import ChunkContext, ExecutionContext, JobExecution, StepExecution

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


# --------------------------------------------------------------------- items


@runtime_checkable
class Reader(Protocol[T_co]):
    """Where a chunk step's items come from (``StepBuilder.reader``)."""

    @abstractmethod
    def read(self) -> T_co | None:
        """Return the next item, or None when there are no more (None ends the step).

        Called once per item, from the step's thread (or its partition's worker), until it
        returns None. An exception fails the chunk: it is retried or skipped as the step's
        ``retry``/``skip`` say, or fails the step. To be restartable, a reader is also an
        :class:`ItemStream` that saves its position in ``update``.
        """


@runtime_checkable
class BatchReader(Protocol[T_co]):
    """A reader that can also hand out many items in one call (optional: the engine uses
    ``read_many`` when a reader has it, and ``read`` otherwise).

    The chunk loop calls ``read_many(n)`` instead of ``read()`` once per item only when
    nothing needs to see the items one at a time: the step has no ``retry`` or ``skip``
    policy. :class:`batchd.items.CsvItemReader`, ``JsonLinesItemReader`` and
    ``FixedWidthItemReader`` have it.
    """

    @abstractmethod
    def read_many(self, n: int) -> Sequence[T_co]:
        """Return a list of up to ``n`` items (``n >= 1``), in the order ``read()`` would hand them
        out; an empty list when there are no more.

        A shorter list than ``n`` does not mean the end: the engine asks again. What
        ``update`` saves after a full list must be exactly what it would save after that
        many ``read()`` calls, so a restart resumes after the last item of the committed
        chunk. A list is shorter only when the reading ended or failed after its items:
        then ``update`` may save what it would after the ``read()`` that returned None or
        raised, and a failure is raised by the next call, as ``read()`` would have raised
        it after those items.
        """


@runtime_checkable
class Processor(Protocol[T_contra, R_co]):
    """Turns each item read into the item to write (``StepBuilder.processor``); a plain
    callable ``fn(item) -> item | None`` works too."""

    @abstractmethod
    def process(self, item: T_contra) -> R_co | None:
        """Return the item to write, or None to filter ``item`` out (counted in
        ``filter_count``).

        Called once per item read, before the chunk is written. On a retry or a skip scan
        the chunk's items are processed again (they are not read again), so ``process``
        should not have side effects that must happen once.
        """


@runtime_checkable
class Writer(Protocol[T]):
    """Where a chunk step's items go (``StepBuilder.writer``); a plain callable
    ``fn(items)`` works too."""

    @abstractmethod
    def write(self, items: list[T]) -> None:
        """Write one chunk's processed items (never an empty list).

        Called inside the chunk transaction, just before each stream's ``update`` and the
        commit of the checkpoint; an exception rolls the chunk back. A writer that joins
        the transaction (see ``batchd.model.current_chunk_transaction``) commits with the
        checkpoint, exactly once. When a skippable error makes the engine look for the bad
        item, ``write`` is called again with one item at a time.
        """


@runtime_checkable
class ItemStream(Protocol):
    """A reader, processor or writer that keeps state across a step and restarts from its
    checkpoint. Every method is optional: the engine calls those the object has.

    The engine gives each execution and each partition its own ``copy.copy`` of the step's
    reader, processor and writer (a pickled copy on a process or remote executor), so
    ``open`` must reset every per-run attribute. A composite reader or writer (one that
    delegates to other readers or writers) must call its inner components' ``open``,
    ``update``, ``complete`` and ``close`` itself, and copy them in its ``__copy__``: the
    engine only sees the outer object, so a hand-made composite that forgets this never
    opens its inner writers (and its copies share them). The built-in
    :class:`batchd.items.CompositeItemWriter` and :class:`batchd.items.CompositeItemProcessor`
    do all of it.
    """

    def open(self, ctx: ExecutionContext) -> None:
        """Prepare to read or write, resuming from the checkpoint in ``ctx``.

        Called once per execution (and per partition), before the first item. ``ctx`` is
        the step's ExecutionContext as last committed (empty on a first run); its read-only
        attributes ``ctx.params`` (the job parameters, typed by the job's ``params_model``)
        and ``ctx.partition`` (this partition's context, or None) say what to work on. An
        exception fails the step before anything is read.
        """
        return None

    def update(self, ctx: ExecutionContext) -> None:
        """Save the position reached into ``ctx``, under keys of your own prefix.

        Called just before each chunk commits, inside its transaction: what is saved here
        is committed with the chunk's output and counters, and is what ``open`` finds after
        a restart. Keep it JSON-serialisable.
        """
        return None

    def close(self) -> None:
        """Release files, connections and buffers.

        Called once at the end of the execution (or partition), after a failure or a stop
        too; an exception here fails a step that had completed.
        """
        return None


@runtime_checkable
class Completable(Protocol):
    """A writer that publishes its output once the step has succeeded."""

    def complete(self, ctx: ExecutionContext) -> None:
        """Publish the output (e.g. rename a temporary file onto its final name).

        Called once after the step's last chunk has committed and before the step is
        recorded COMPLETED; never after a failure or a stop. A restart after a crash here
        calls it again, so it must be idempotent.
        """
        return None


@runtime_checkable
class Partitioner(Protocol):
    """Splits a step into partitions (``StepBuilder.partitioner``); a plain callable
    ``fn(n, params)`` works too."""

    @abstractmethod
    def partition(self, n: int, params: Any) -> list[dict[str, Any]]:
        """Return the partitions' contexts: JSON-serialisable dicts, ideally ``n`` of them.

        Called once, in the job's process, on the step's first execution; the plan is
        saved and reused on restart. Each partition's reader and writer find their dict in
        ``ctx.partition``. ``params`` are the job parameters.
        """


@runtime_checkable
class Aggregator(Protocol):
    """Runs once after every partition of a step has COMPLETED (``StepBuilder.aggregator``);
    a plain callable ``fn(step_execution, partitions)`` works too. It may also be an
    :class:`ItemStream` (``open``/``close`` around the call)."""

    @abstractmethod
    def aggregate(self, step_execution: StepExecution, partitions: list[StepExecution]) -> None:
        """Combine the partitions' results (e.g. concatenate their files).

        Called in the job's process, once all ``partitions`` COMPLETED, before the step is
        recorded COMPLETED; a restart after a crash calls it again, so make it idempotent.
        """


# Plain callables accepted wherever an object with one method is.
ProcessFunction = Callable[[Any], Any]
WriteFunction = Callable[[list[Any]], Any]
PartitionFunction = Callable[[int, Any], list[dict[str, Any]]]
AggregateFunction = Callable[[StepExecution, list[StepExecution]], Any]


# ------------------------------------------------------------------ listeners
# Registered with ``.listener(obj)`` on a job or a step. An exception raised by a listener
# fails the step (or job) it belongs to.


@runtime_checkable
class JobListener(Protocol):
    """Hears a job execution begin and end (registered on a job)."""

    def before_job(self, execution: JobExecution) -> None:
        """Called once the execution is STARTED, before its first step."""
        return None

    def after_job(self, execution: JobExecution) -> None:
        """Called after the last step ran (or the job failed or stopped), before the
        execution's end is recorded; ``execution.status`` is its outcome."""
        return None


@runtime_checkable
class StepListener(Protocol):
    """Hears each step execution begin and end."""

    def before_step(self, step_execution: StepExecution) -> None:
        """Called before the step runs (for a partitioned step, once, not per partition)."""
        return None

    def after_step(self, step_execution: StepExecution) -> None:
        """Called after the step ran, before its end is recorded; ``step_execution.status``
        is its outcome. An exception turns the step FAILED."""
        return None


@runtime_checkable
class ChunkListener(Protocol):
    """Hears each chunk; runs in the partition's worker for a partitioned step (so it must
    be picklable on a process executor)."""

    def before_chunk(self, ctx: ChunkContext) -> None:
        """Called before the chunk's first item is read."""
        return None

    def after_chunk(self, ctx: ChunkContext) -> None:
        """Called after the chunk committed; ``ctx.items`` are its items as read."""
        return None

    def on_chunk_error(self, ctx: ChunkContext, error: BaseException) -> None:
        """Called when the chunk fails for good with ``error`` (retries and skips did not
        save it): nothing of it was committed, and the step fails next."""
        return None


@runtime_checkable
class SkipListener(Protocol):
    """Hears each skipped item once, after the chunk it was skipped from committed."""

    def on_skip_in_read(self, error: BaseException) -> None:
        """A read raised the skippable ``error``."""
        return None

    def on_skip_in_process(self, item: Any, error: BaseException) -> None:
        """Processing ``item`` raised the skippable ``error``."""
        return None

    def on_skip_in_write(self, item: Any, error: BaseException) -> None:
        """Writing ``item`` raised the skippable ``error``."""
        return None


@runtime_checkable
class PartitionListener(Protocol):
    """Hears a partitioned step's partitions; runs in the job's process."""

    def before_partition(self, step_execution: StepExecution) -> None:
        """Called before the partitions are planned and started."""
        return None

    def after_partition(
        self, step_execution: StepExecution, partitions: list[StepExecution]
    ) -> None:
        """Called once every partition has ended, with all of them."""
        return None

    def on_partition_error(self, step_execution: StepExecution, error: BaseException) -> None:
        """Called for each partition that FAILED (``step_execution`` is the partition's)."""
        return None


# ---------------------------------------------------------------- observers
# The daemon watches the engine and its own triggers through these. Unlike listeners, an
# observer that raises is logged and ignored: it must not break what it watches.


@runtime_checkable
class ExecutionObserver(Protocol):
    """Watches every execution of a :class:`~batchd.engine.JobOperator`
    (``operator.add_observer(obj)``)."""

    def on_execution_created(self, execution: JobExecution) -> None:
        """Called when an execution has been created (STARTING), before it runs."""
        return None

    def on_execution_ended(self, execution: JobExecution) -> None:
        """Called once the execution's end is recorded, after its ``after_job`` listeners."""
        return None


@runtime_checkable
class ScheduleListener(Protocol):
    """Watches the daemon's schedules (``Scheduler(listener=obj)``)."""

    def on_schedule_fire(self, name: str, outcome: str) -> None:
        """Called after each fire of schedule ``name``; ``outcome`` is ``"started"``,
        ``"complete"``, ``"running"``, ``"invalid"``, ``"error"``, ..."""
        return None

    def on_deadline_missed(self, name: str) -> None:
        """Called once when a business date of schedule ``name`` has not completed by its
        deadline."""
        return None

    def on_schedule_late(self, name: str, late: bool) -> None:
        """Called on every check of a schedule that has a deadline: whether one of its
        business dates is past its deadline and still not completed."""
        return None


@runtime_checkable
class WatchListener(Protocol):
    """Watches the daemon's watched directories (``Watcher(listener=obj)``)."""

    def on_watch_file(self, watch: str, outcome: str) -> None:
        """Called for each file watch ``watch`` took or turned away; ``outcome`` is
        ``"started"``, ``"rejected"``, ``"error"``, ..."""
        return None


@runtime_checkable
class ControlListener(Protocol):
    """Watches the control socket (``ControlServer(control, listener=obj)``)."""

    def on_control_request(self, op: str, outcome: str) -> None:
        """Called after each request, with its operation and ``"ok"`` or ``"error"``."""
        return None


def item_method(component: Any, name: str) -> Any:
    """What the engine calls for ``component``'s ``name`` (``read``, ``process``, ``write``):
    its method of that name, or the component itself when it is a plain function (None for
    no component)."""
    if component is None:
        return None
    method = getattr(component, name, None)
    if callable(method):
        return method
    if callable(component):
        return component
    raise TypeError(f"{component!r} has no {name}() method and is not callable")


def hooks(protocol: type) -> tuple[str, ...]:
    """The hook names a listener or observer Protocol declares, in order."""
    return tuple(name for name in vars(protocol) if not name.startswith("_"))


JOB_HOOKS = hooks(JobListener)
# The hooks called from inside the chunk loop (in a partition's worker, too).
CHUNK_HOOKS = hooks(ChunkListener) + hooks(SkipListener)
STEP_HOOKS = hooks(StepListener) + hooks(PartitionListener) + CHUNK_HOOKS
