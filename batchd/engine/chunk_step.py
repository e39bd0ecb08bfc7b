"""Chunk-oriented steps: read a chunk, process it, write it, commit one checkpoint."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from batchd import failpoints
from batchd.engine.faults import FaultPolicy, SkipLimitExceeded
from batchd.engine.listeners import Listeners
from batchd.engine.step_run import StepOutcome, StepRun, describe_error
from batchd.errors import ExecutionLost, JobStopped
from batchd.interfaces import (
    ProcessFunction,
    Processor,
    Reader,
    WriteFunction,
    Writer,
    item_method,
)
from batchd.model import (
    BatchStatus,
    ChunkContext,
    ChunkTransaction,
    ExecutionContext,
    canonical_json,
    current_chunk_transaction,
)

log = logging.getLogger(__name__)

BEFORE_CHUNK_COMMIT = failpoints.declare(
    "engine.before_chunk_commit",
    "the chunk's output files hold bytes past the checkpoint, its transaction is not committed "
    "(the database drops it with the connection): a restart cuts the files back to the "
    "checkpointed sizes and writes the chunk again",
)
AFTER_CHUNK_COMMIT = failpoints.declare(
    "engine.after_chunk_commit",
    "the chunk and its checkpoint are committed, the next chunk not begun: a restart resumes "
    "after it",
)
AFTER_OUTPUT_RENAME = failpoints.declare(
    "engine.after_output_rename",
    "the writers' complete() ran (each output file renamed onto its final path) but the "
    "step's end is not recorded: a restart takes the published file back from the checkpoint "
    "and publishes it again, byte for byte",
)


@dataclass(eq=False)  # hashable by identity: steps are keys of a job's flow
class ChunkStep:
    """Reads up to ``chunk_size`` items, processes each (None filters it out), writes the
    list and commits the checkpoint with the counters in one transaction.

    ``reader`` has ``read() -> item | None``; ``processor`` is a callable or has
    ``process(item)``; ``writer`` is a callable or has ``write(items)``. Any of them may be
    an ItemStream (``open(ctx)``, ``update(ctx)``, ``close()``); writers may also have
    ``complete(ctx)``, called once after the last chunk committed (see
    :mod:`batchd.interfaces`).
    """

    name: str
    reader: Reader[Any]
    writer: Writer[Any] | WriteFunction
    processor: Processor[Any, Any] | ProcessFunction | None = None
    chunk_size: int = 100
    faults: FaultPolicy = field(default_factory=FaultPolicy)
    listeners: Listeners = field(default_factory=Listeners)
    allow_start_if_complete: bool = False
    start_limit: int | None = None
    # The processor returns a list of items for each item (empty: filtered), flattened for
    # the writer.
    fan_out: bool = False

    def execute(self, run: StepRun) -> StepOutcome:
        return _ChunkRun(self, run).run()


class _WriteFailed(Exception):
    """Carries an error raised by the writer, so that only write errors are retried whole."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class _ChunkTally:
    """Counts of one chunk attempt, applied to the step execution only when it commits."""

    written: int = 0
    filtered: int = 0
    process_skips: int = 0
    write_skips: int = 0
    skipped: list[tuple[str, Any, BaseException]] = field(default_factory=list)


# What _ChunkRun._call_or_skip returns for a skipped item (None means the end, or filtered).
_SKIPPED = object()


def _copy(component: Any) -> Any:
    # Each execution gets its own copy of stateful components (DESIGN §3.1); copying a
    # plain function gives the function itself.
    return copy.copy(component) if component is not None else None


class _ChunkRun:
    """The state of one chunk step execution."""

    def __init__(self, step: ChunkStep, run: StepRun) -> None:
        self.step = step
        self.run_state = run
        self.repository = run.repository
        self.step_execution = run.step_execution
        self.listeners = run.listeners
        self.faults = step.faults
        self.reader = _copy(step.reader)
        self.processor = _copy(step.processor)
        self.writer = _copy(step.writer)
        self.read = item_method(self.reader, "read")
        # A reader's read_many (BatchReader) takes the chunk's items in a few calls instead
        # of one per item; a retry or skip policy needs each read on its own.
        read_many = getattr(self.reader, "read_many", None)
        self.read_many = read_many if callable(read_many) and not self.faults.tolerant else None
        self.process = item_method(self.processor, "process")
        self.write = item_method(self.writer, "write")
        self.streams = [
            part
            for part in (self.reader, self.processor, self.writer)
            if part is not None and callable(getattr(part, "open", None))
        ]
        self.ctx = ExecutionContext(
            run.step_execution.execution_context,
            params=run.params,
            partition=run.step_execution.partition,
            job_context=run.job_context,
            step_context=run.step_context,
        )
        self.committed_context = canonical_json(dict(self.ctx))
        # Looked up once: most steps have no chunk listeners and this is the hot loop.
        self.hooks = {
            hook: self.listeners.has(hook)
            for hook in ("before_chunk", "after_chunk", "on_chunk_error")
        }

    def run(self) -> StepOutcome:
        opened: list[Any] = []
        status = BatchStatus.FAILED
        message: str | None = None
        failure: Exception | None = None
        try:
            for stream in self.streams:
                stream.open(self.ctx)
                opened.append(stream)
            status = self._loop()
            if status == BatchStatus.COMPLETED:
                for stream in self.streams:
                    complete = getattr(stream, "complete", None)
                    if callable(complete):
                        complete(self.ctx)
                failpoints.failpoint(AFTER_OUTPUT_RENAME)
        except (ExecutionLost, KeyboardInterrupt):
            raise
        except JobStopped as stopped:
            status, message = BatchStatus.STOPPED, str(stopped)
        except Exception as error:
            status, message, failure = BatchStatus.FAILED, describe_error(error), error
        finally:
            for stream in reversed(opened):
                close = getattr(stream, "close", None)
                if not callable(close):
                    continue
                try:
                    close()
                except Exception as error:
                    log.exception("closing %r in step %s failed", stream, self.step.name)
                    if status == BatchStatus.COMPLETED:
                        status, message = BatchStatus.FAILED, describe_error(error)
        return StepOutcome(status, json.loads(self.committed_context), message, error=failure)

    def _loop(self) -> BatchStatus:
        while True:
            if self.run_state.stop_requested():
                return BatchStatus.STOPPED
            chunk = ChunkContext(self.step_execution, self.ctx, [])
            if self.hooks["before_chunk"]:
                self.listeners.call("before_chunk", chunk)
            try:
                tally = _ChunkTally()
                try:
                    end = self._read_chunk(chunk.items, tally)
                except Exception:
                    # What was read of the chunk is dropped: a rollback like any other.
                    self.step_execution.rollback_count += 1
                    raise
                # A last chunk that read nothing commits nothing, but still ends with
                # after_chunk: listeners get one after_chunk or on_chunk_error per before_chunk.
                if chunk.items or tally.skipped:
                    self._process_and_write(chunk.items, tally)
            except ExecutionLost:
                raise
            except Exception as error:
                cause = error.error if isinstance(error, _WriteFailed) else error
                if self.hooks["on_chunk_error"]:
                    self.listeners.call("on_chunk_error", chunk, cause)
                raise cause from None
            self._report_skips(tally)
            if self.hooks["after_chunk"]:
                self.listeners.call("after_chunk", chunk)
            if end:
                return BatchStatus.COMPLETED

    # ---------------------------------------------------------------- reading

    def _read_chunk(self, items: list[Any], tally: _ChunkTally) -> bool:
        """Fill ``items``; True when the reader is exhausted."""
        read, size, step_execution = self.read, self.step.chunk_size, self.step_execution
        read_many = self.read_many
        if read_many is not None:
            while len(items) < size:
                batch = read_many(size - len(items))
                if not batch:
                    return True
                items.extend(batch)
                step_execution.read_count += len(batch)
            return False
        tolerant = self.faults.tolerant
        while len(items) < size:
            item = self._call_or_skip(read, "read", None, tally) if tolerant else read()
            if item is _SKIPPED:
                continue
            if item is None:
                return True
            items.append(item)
            step_execution.read_count += 1
        return False

    # ------------------------------------------------------ processing + writing

    def _process_and_write(self, items: list[Any], tally: _ChunkTally) -> None:
        """Process and write the chunk until it commits: a retryable write error retries
        the chunk, a skippable one writes it again item by item to skip the bad items."""
        read_skips = list(tally.skipped)
        retries = 0
        scan = False
        while True:
            attempt = _ChunkTally(skipped=list(read_skips))
            try:
                outputs = self._process_items(items, attempt)
                self._write_and_commit(outputs, attempt, scan=scan)
            except ExecutionLost:
                raise
            except Exception as failure:
                self.step_execution.rollback_count += 1
                error = failure.error if isinstance(failure, _WriteFailed) else None
                if error is None or scan:
                    raise
                if self.faults.is_retryable(error) and retries < self.faults.retry_limit:
                    retries += 1
                    log.info(
                        "step %s: write failed (%s), retry %d of %d",
                        self.step.name,
                        error,
                        retries,
                        self.faults.retry_limit,
                    )
                    time.sleep(self.faults.backoff)
                    continue
                if not self.faults.is_skippable(error):
                    raise
                scan = True
                continue
            tally.skipped = attempt.skipped
            return

    def _process_items(self, items: list[Any], tally: _ChunkTally) -> list[Any]:
        process = self.process
        if process is None:
            return list(items)
        outputs = []
        tolerant = self.faults.tolerant
        for item in items:
            if tolerant:
                result = self._call_or_skip(partial(process, item), "process", item, tally)
                if result is _SKIPPED:
                    continue
            else:
                result = process(item)
            if not self.step.fan_out:
                if result is None:
                    tally.filtered += 1
                else:
                    outputs.append(result)
            elif (
                result is None
                or isinstance(result, str | bytes | Mapping)
                or not (isinstance(result, Iterable))
            ):
                raise TypeError(
                    f"the processor of step {self.step.name!r} (fan_out=True) must return a "
                    f"list of items, not {type(result).__name__}"
                )
            else:
                before = len(outputs)
                outputs.extend(result)
                if len(outputs) == before:
                    tally.filtered += 1
        return outputs

    def _write_and_commit(self, outputs: list[Any], tally: _ChunkTally, *, scan: bool) -> None:
        step_execution = self.step_execution
        before = step_execution.counters()
        try:
            with self.repository.chunk_transaction(step_execution) as connection:
                token = current_chunk_transaction.set(
                    ChunkTransaction(
                        connection=connection,
                        engine=self.repository.engine,
                        database_id=self.repository.database_id,
                    )
                )
                try:
                    if scan:
                        self._write_one_by_one(connection, outputs, tally)
                    elif outputs:
                        try:
                            self.write(outputs)
                        except Exception as error:
                            raise _WriteFailed(error) from error
                        tally.written = len(outputs)
                    for stream in self.streams:
                        update = getattr(stream, "update", None)
                        if callable(update):
                            update(self.ctx)
                    step_execution.write_count += tally.written
                    step_execution.filter_count += tally.filtered
                    step_execution.process_skip_count += tally.process_skips
                    step_execution.write_skip_count += tally.write_skips
                    step_execution.commit_count += 1
                    context_json = canonical_json(dict(self.ctx))
                    self.repository.commit_chunk(connection, step_execution, context_json)
                    failpoints.failpoint(BEFORE_CHUNK_COMMIT)
                finally:
                    current_chunk_transaction.reset(token)
            failpoints.failpoint(AFTER_CHUNK_COMMIT)
        except BaseException:
            # Nothing of this chunk was committed: forget its counts and checkpoint.
            for name, value in before.items():
                if name != "rollback_count":
                    setattr(step_execution, name, value)
            self.ctx.clear()
            self.ctx.update(json.loads(self.committed_context))
            raise
        self.committed_context = context_json

    def _write_one_by_one(self, connection: Any, outputs: list[Any], tally: _ChunkTally) -> None:
        for output in outputs:
            # A savepoint undoes what a failing item wrote to the chunk's transaction.
            savepoint = connection.begin_nested()
            try:
                self.write([output])
            except Exception as error:
                savepoint.rollback()
                if not self.faults.is_skippable(error):
                    raise _WriteFailed(error) from error
                tally.write_skips += 1
                tally.skipped.append(("write", output, error))
                self._check_skip_limit(tally, error)
                continue
            savepoint.commit()
            tally.written += 1

    # ------------------------------------------------------------------ skips

    def _call_or_skip(
        self, call: Callable[[], Any], kind: str, item: Any, tally: _ChunkTally
    ) -> Any:
        """``call()`` with the step's retries, or :data:`_SKIPPED` when it raised a skippable
        error: the item is then counted as skipped in ``kind`` ("read" or "process")."""
        try:
            return self.faults.call_with_retry(call)
        except Exception as error:
            if not self.faults.is_skippable(error):
                raise
            if kind == "read":
                # A read is never done again (the chunk keeps its items): count it now.
                self.step_execution.read_skip_count += 1
            else:
                tally.process_skips += 1
            tally.skipped.append((kind, item, error))
            self._check_skip_limit(tally, error)
            return _SKIPPED

    def _check_skip_limit(self, tally: _ChunkTally, error: BaseException) -> None:
        step_execution = self.step_execution
        # Read skips are already on the step execution; the others wait for the commit.
        skipped = step_execution.skip_count + tally.process_skips + tally.write_skips
        if skipped > self.faults.skip_limit:
            raise SkipLimitExceeded(
                f"skip limit {self.faults.skip_limit} exceeded in step {self.step.name!r}: "
                f"last error {type(error).__name__}: {error}"
            ) from error

    def _report_skips(self, tally: _ChunkTally) -> None:
        """Skip listeners hear of each skipped item once, after its chunk committed."""
        for kind, item, error in tally.skipped:
            if kind == "read":
                self.listeners.call("on_skip_in_read", error)
            else:
                self.listeners.call(f"on_skip_in_{kind}", item, error)
