"""Fault tolerance of chunk steps (DESIGN §3 "Fault tolerance"), on SQLite and on PostgreSQL.

Every test runs a real job through a JobOperator and checks what a user would: the step's
counters as the repository recorded them, and exactly which items reached the writer in a
chunk that committed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import CheckConstraint, MetaData, Table, create_engine
from sqlalchemy.exc import IntegrityError

from batchd import (
    BatchStatus,
    JobBuilder,
    JobExecution,
    JobOperator,
    JobRegistry,
    StepBuilder,
    StepExecution,
)
from batchd.items import ListItemReader
from batchd.model import ChunkContext
from batchd.model.records import STEP_COUNTERS
from tests.support.jobs import (
    CountingReader,
    FaultyReader,
    SqlTableWriter,
    create_output_table,
    insert_in_chunk,
    item_table,
    output_table,
    table_items,
)

DAY = {"date": "2026-11-21"}


# ---------------------------------------------------------------------------- helpers


class RecordingWriter:
    """Records every call, and the items of every call that did not raise. ``fail(items)``
    returns the error to raise for a call, or None; it is asked before anything is
    recorded, so ``written`` holds exactly the items of chunks that committed.

    The engine gives each execution a shallow copy of the writer: the lists are shared."""

    def __init__(self, fail: Callable[[list[Any]], Exception | None] | None = None) -> None:
        self.fail = fail
        self.calls: list[list[Any]] = []
        self.written: list[Any] = []

    def write(self, items: list[Any]) -> None:
        self.calls.append(list(items))
        error = self.fail(items) if self.fail is not None else None
        if error is not None:
            raise error
        self.written.extend(items)


class SkipLog:
    """A skip listener recording (kind, item, error) for every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Exception]] = []

    def on_skip_in_read(self, error: Exception) -> None:
        self.calls.append(("read", None, error))

    def on_skip_in_process(self, item: Any, error: Exception) -> None:
        self.calls.append(("process", item, error))

    def on_skip_in_write(self, item: Any, error: Exception) -> None:
        self.calls.append(("write", item, error))

    def summary(self) -> list[tuple[str, Any, str, str]]:
        return [(kind, item, type(error).__name__, str(error)) for kind, item, error in self.calls]


# The counters of a StepExecution (DESIGN §2): all eight, as the model lists them.
COUNTERS = STEP_COUNTERS
assert len(COUNTERS) == 8


def counters(step: StepExecution) -> dict[str, int]:
    return {name: getattr(step, name) for name in COUNTERS}


def expected(**nonzero: int) -> dict[str, int]:
    """All eight counters: zero unless given."""
    assert set(nonzero) <= set(COUNTERS)
    return dict.fromkeys(COUNTERS, 0) | nonzero


def load_step(reader: Any, writer: Any, *, chunk_size: int, processor: Any = None) -> StepBuilder:
    """The step ``load`` of the tests' job: ``reader``, ``processor`` if any, ``writer``."""
    step = StepBuilder("load").reader(reader).writer(writer).chunk_size(chunk_size)
    return step if processor is None else step.processor(processor)


Run = Callable[[StepBuilder], JobExecution]


@pytest.fixture
def run(operator: JobOperator, registry: JobRegistry) -> Run:
    """Registers the job ``ft`` of the one step given and runs it to its end."""

    def run_step(step: StepBuilder) -> JobExecution:
        registry.register(JobBuilder("ft").step(step.build()).build())
        return operator.start("ft", DAY)

    return run_step


def only_step(execution: JobExecution) -> StepExecution:
    assert len(execution.step_executions) == 1
    return execution.step_executions[0]


# ---------------------------------------------------------------------------- 1. retry

RETRY_TIMEOUTS: dict[str, Any] = {"on": (TimeoutError,), "limit": 3, "backoff": 0.01}


def flaky_processor(failures: int, on_item: int, calls: list[tuple[int, float]]) -> Any:
    """Returns the item, but raises TimeoutError the first ``failures`` times it sees
    ``on_item``; records (item, time) of every call."""
    left = {"failures": failures}

    def process(item: int) -> int:
        calls.append((item, time.monotonic()))
        if item == on_item and left["failures"] > 0:
            left["failures"] -= 1
            raise TimeoutError(f"ledger timed out on item {item}")
        return item

    return process


def run_flaky(
    run: Run, failures: int
) -> tuple[JobExecution, RecordingWriter, list[tuple[int, float]]]:
    """Runs 1..5 in one chunk through a processor that times out the first ``failures``
    times it sees 3, retried up to 3 times; returns the execution, the writer and the
    processor's calls."""
    calls: list[tuple[int, float]] = []
    writer = RecordingWriter()
    step = load_step(
        CountingReader(5), writer, chunk_size=10, processor=flaky_processor(failures, 3, calls)
    )
    return run(step.retry(**RETRY_TIMEOUTS)), writer, calls


def test_processor_retried_within_the_limit_completes_and_writes_each_item_once(run: Run) -> None:
    execution, writer, calls = run_flaky(run, failures=2)
    assert execution.status == BatchStatus.COMPLETED
    assert counters(only_step(execution)) == expected(read_count=5, write_count=5, commit_count=1)
    assert writer.written == [1, 2, 3, 4, 5]
    assert [item for item, _ in calls] == [1, 2, 3, 3, 3, 4, 5]
    # Tries are ``backoff`` apart.
    tries = [at for item, at in calls if item == 3]
    assert all(later - earlier >= 0.01 for earlier, later in itertools.pairwise(tries))


def test_processor_failing_past_the_retry_limit_fails_the_step(run: Run) -> None:
    execution, writer, calls = run_flaky(run, failures=4)
    assert execution.status == BatchStatus.FAILED
    step = only_step(execution)
    assert step.status == BatchStatus.FAILED
    assert (step.exit_message or "").startswith("TimeoutError: ledger timed out on item 3")
    assert "ledger timed out on item 3" in (execution.exit_message or "")
    assert counters(step) == expected(read_count=5, rollback_count=1)
    assert [item for item, _ in calls] == [1, 2, 3, 3, 3, 3]  # one try and three retries
    assert writer.calls == []


# ---------------------------------------------------------------------- 2. write retry


def counting_processor(seen: dict[int, int]) -> Any:
    def process(item: int) -> int:
        seen[item] = seen.get(item, 0) + 1
        return item

    return process


def test_a_write_failing_once_rolls_the_chunk_back_and_retries_it(run: Run) -> None:
    failures = {"left": 1}

    def fail(items: list[int]) -> Exception | None:
        if 13 in items and failures["left"]:
            failures["left"] -= 1
            return TimeoutError("ledger timed out")
        return None

    writer = RecordingWriter(fail)
    processed: dict[int, int] = {}
    execution = run(
        load_step(
            CountingReader(25), writer, chunk_size=10, processor=counting_processor(processed)
        ).retry(**RETRY_TIMEOUTS)
    )
    assert execution.status == BatchStatus.COMPLETED
    assert counters(only_step(execution)) == expected(
        read_count=25, write_count=25, commit_count=3, rollback_count=1
    )
    assert writer.written == list(range(1, 26))
    chunk2 = list(range(11, 21))
    assert writer.calls == [list(range(1, 11)), chunk2, chunk2, list(range(21, 26))]
    # The retried chunk was processed again from its buffer, not read again.
    assert processed == {i: 2 if 11 <= i <= 20 else 1 for i in range(1, 26)}


def test_a_write_failing_past_the_retry_limit_fails_the_step(run: Run) -> None:
    def fail(items: list[int]) -> Exception | None:
        return TimeoutError("ledger timed out") if 13 in items else None

    writer = RecordingWriter(fail)
    execution = run(load_step(CountingReader(25), writer, chunk_size=10).retry(**RETRY_TIMEOUTS))
    assert execution.status == BatchStatus.FAILED
    step = only_step(execution)
    assert (step.exit_message or "").startswith("TimeoutError: ledger timed out")
    assert counters(step) == expected(
        read_count=20, write_count=10, commit_count=1, rollback_count=4
    )
    assert writer.written == list(range(1, 11))
    assert writer.calls == [list(range(1, 11))] + [list(range(11, 21))] * 4


# ------------------------------------------------------------ 3.-5. skips and listeners

# The skip scenario: items 1..20, chunks of 5, the processor multiplies by 10.
# - reading 4 and 15 fails (read skips);
# - processing 7 and 19 fails (process skips), 10 is filtered;
# - writing 180 fails: its chunk [180, 200] is written again item by item (write skip).
# Chunks as read: [1, 2, 3, 5, 6], [7, 8, 9, 10, 11], [12, 13, 14, 16, 17], [18, 19, 20].
SKIP_WRITTEN = [10, 20, 30, 50, 60, 80, 90, 110, 120, 130, 140, 160, 170, 200]
# The same whatever the limit: reads count as they happen; 10 is filtered in a committed chunk.
SKIP_READS = {"read_count": 18, "filter_count": 1, "read_skip_count": 2}


def skip_processor(item: int) -> int | None:
    if item in (7, 19):
        raise ValueError(f"cannot price item {item}")
    if item == 10:
        return None
    return item * 10


def skip_writer() -> RecordingWriter:
    return RecordingWriter(
        lambda items: ValueError("account 180 is closed") if 180 in items else None
    )


def skip_step(writer: RecordingWriter, limit: int, listener: Any = None) -> StepBuilder:
    step = (
        StepBuilder("load")
        .reader(FaultyReader(20, bad={4, 15}))
        .processor(skip_processor)
        .writer(writer)
        .chunk_size(5)
        .skip(on=(ValueError,), limit=limit)
    )
    return step.listener(listener) if listener is not None else step


def test_skips_in_read_process_and_write(run: Run) -> None:
    writer = skip_writer()
    execution = run(skip_step(writer, limit=5))  # 5 skips: within the limit
    assert execution.status == BatchStatus.COMPLETED
    assert counters(only_step(execution)) == expected(
        **SKIP_READS,
        write_count=14,
        commit_count=4,
        rollback_count=1,
        process_skip_count=2,
        write_skip_count=1,
    )
    # Skipped items never reach a committed chunk; every other item does, once.
    assert writer.written == SKIP_WRITTEN
    # The last chunk failed whole, then was written again one item at a time.
    assert writer.calls[-3:] == [[180, 200], [180], [200]]


def test_skip_listeners_hear_each_skipped_item_once(run: Run) -> None:
    skips = SkipLog()
    execution = run(skip_step(skip_writer(), limit=5, listener=skips))
    assert execution.status == BatchStatus.COMPLETED
    # Item 19's chunk was processed twice (before and during the scan): heard of once.
    assert skips.summary() == [
        ("read", None, "ValueError", "unreadable record 4"),
        ("process", 7, "ValueError", "cannot price item 7"),
        ("read", None, "ValueError", "unreadable record 15"),
        ("process", 19, "ValueError", "cannot price item 19"),
        ("write", 180, "ValueError", "account 180 is closed"),
    ]


def test_past_the_skip_limit_the_step_fails(run: Run) -> None:
    skips = SkipLog()
    writer = skip_writer()
    execution = run(skip_step(writer, limit=4, listener=skips))
    assert execution.status == BatchStatus.FAILED
    step = only_step(execution)
    message = step.exit_message or ""
    assert "skip limit 4 exceeded" in message
    assert "ValueError: account 180 is closed" in message  # the skip that was one too many
    assert "skip limit 4 exceeded" in (execution.exit_message or "")
    # The first three chunks committed; the last rolled back twice (write, then its scan).
    assert counters(step) == expected(
        **SKIP_READS, write_count=13, commit_count=3, rollback_count=2, process_skip_count=1
    )
    assert writer.written == SKIP_WRITTEN[:-1]
    # Listeners hear only of skips in committed chunks.
    assert [kind for kind, _, _ in skips.calls] == ["read", "process", "read"]


def test_past_the_skip_limit_in_read_the_step_fails(run: Run) -> None:
    writer = RecordingWriter()
    execution = run(
        load_step(FaultyReader(20, bad={4, 15}), writer, chunk_size=5).skip(
            on=(ValueError,), limit=1
        )
    )
    assert execution.status == BatchStatus.FAILED
    step = only_step(execution)
    assert "skip limit 1 exceeded" in (step.exit_message or "")
    assert "ValueError: unreadable record 15" in (step.exit_message or "")
    # Reads are counted as they happen; the third chunk (12, 13, 14, then 15) rolled back.
    assert counters(step) == expected(
        read_count=13, write_count=10, commit_count=2, rollback_count=1, read_skip_count=2
    )
    assert writer.written == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]


def test_errors_that_are_not_skippable_are_not_skipped(run: Run) -> None:
    def process(item: int) -> int:
        if item == 3:
            raise KeyError("no such account")
        return item

    writer = RecordingWriter()
    execution = run(
        load_step(CountingReader(5), writer, chunk_size=100, processor=process).skip(
            on=(ValueError,), limit=10
        )
    )
    assert execution.status == BatchStatus.FAILED
    step = only_step(execution)
    assert (step.exit_message or "").startswith("KeyError: 'no such account'")
    assert counters(step) == expected(read_count=5, rollback_count=1)
    assert writer.calls == []


# ------------------------------------------------------------------- 6. chunk listeners


class ChunkLog:
    """A chunk listener recording what each hook saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def before_chunk(self, ctx: ChunkContext) -> None:
        self.calls.append(("before", list(ctx.items)))

    def after_chunk(self, ctx: ChunkContext) -> None:
        self.calls.append(
            ("after", list(ctx.items), ctx.step_execution.commit_count, dict(ctx.execution_context))
        )

    def on_chunk_error(self, ctx: ChunkContext, error: Exception) -> None:
        self.calls.append(("error", list(ctx.items), error))


# What a chunk listener hears of 1..20 in chunks of 10 as read from a CountingReader.
FIRST_TWO_CHUNKS = [
    ("before", []),
    ("after", list(range(1, 11)), 1, {"CountingReader.next": 11}),
    ("before", []),
    ("after", list(range(11, 21)), 2, {"CountingReader.next": 21}),
]


def test_chunk_listeners_see_each_chunk_as_read_and_the_error(run: Run) -> None:
    ledger_locked = RuntimeError("ledger is locked")
    writer = RecordingWriter(lambda items: ledger_locked if 22 in items else None)
    chunks = ChunkLog()
    execution = run(
        load_step(
            CountingReader(25),
            writer,
            chunk_size=10,
            processor=lambda item: None if item % 2 else item,  # what is written differs
        ).listener(chunks)
    )
    assert execution.status == BatchStatus.FAILED
    assert chunks.calls == [
        *FIRST_TWO_CHUNKS,
        ("before", []),
        ("error", list(range(21, 26)), ledger_locked),
    ]
    assert chunks.calls[-1][2] is ledger_locked
    assert writer.written == list(range(2, 21, 2))


def test_every_before_chunk_is_followed_by_after_chunk(run: Run) -> None:
    chunks = ChunkLog()
    execution = run(
        load_step(CountingReader(20), RecordingWriter(), chunk_size=10).listener(chunks)
    )
    assert execution.status == BatchStatus.COMPLETED
    # 20 items in chunks of 10: the reader's end is only found by a third, empty chunk.
    # It commits nothing (commit_count counts chunks that read an item), but a listener
    # that started something in before_chunk still hears that the chunk ended.
    assert chunks.calls == [
        *FIRST_TWO_CHUNKS,
        ("before", []),
        ("after", [], 2, {"CountingReader.next": 21}),
    ]
    assert counters(only_step(execution)) == expected(read_count=20, write_count=20, commit_count=2)


# --------------------------------------------------------------- 7. failure and restart


def test_other_errors_fail_the_step_and_a_restart_resumes_after_the_last_commit(
    operator: JobOperator, run: Run
) -> None:
    broken = {"on": True}

    def fail(items: list[int]) -> Exception | None:
        return RuntimeError("ledger is locked") if broken["on"] and 23 in items else None

    writer = RecordingWriter(fail)
    failed = run(
        load_step(CountingReader(45), writer, chunk_size=10)
        .retry(**RETRY_TIMEOUTS)
        .skip(on=(ValueError,), limit=10)
    )
    assert failed.status == BatchStatus.FAILED
    step = only_step(failed)
    message = step.exit_message or ""
    assert message.startswith("RuntimeError: ledger is locked\n")
    assert "Traceback (most recent call last)" in message
    assert "in write" in message  # the traceback reaches the writer
    assert "ledger is locked" in (failed.exit_message or "")
    assert counters(step) == expected(
        read_count=30, write_count=20, commit_count=2, rollback_count=1
    )
    assert step.execution_context == {"CountingReader.next": 21}
    assert len(writer.calls) == 3  # neither retried nor scanned

    broken["on"] = False
    restarted = operator.restart("ft")
    assert restarted.status == BatchStatus.COMPLETED
    assert restarted.instance_id == failed.instance_id
    # Counters count this execution only: items 21..45.
    assert counters(only_step(restarted)) == expected(read_count=25, write_count=25, commit_count=3)
    assert writer.written == list(range(1, 46))


# ------------------------------------------------ 8. exactly-once SQL output with skips


def test_sql_writer_skips_duplicate_keys_and_keeps_the_rest_of_the_chunk(
    run: Run, database_url: str
) -> None:
    create_output_table(database_url)
    skips = SkipLog()
    # 7 comes twice within the second chunk; 3 again in the third, after its chunk committed.
    items = [1, 2, 3, 4, 5, 6, 7, 8, 7, 9, 10, 3, 11, 12]
    execution = run(
        load_step(ListItemReader(items), SqlTableWriter(database_url), chunk_size=5)
        .skip(on=(IntegrityError,), limit=5)
        .listener(skips)
    )
    assert execution.status == BatchStatus.COMPLETED, execution.exit_message
    assert counters(only_step(execution)) == expected(
        read_count=14, write_count=12, commit_count=3, rollback_count=2, write_skip_count=2
    )
    assert table_items(database_url, output_table()) == list(range(1, 13))
    assert [(kind, item) for kind, item, _ in skips.calls] == [("write", 7), ("write", 3)]
    assert all(isinstance(error, IntegrityError) for _, _, error in skips.calls)


def checked_tables() -> tuple[Table, Table]:
    metadata = MetaData()
    audit = item_table("audit", metadata, key=False)
    checked = item_table(
        "checked", metadata, CheckConstraint("item <> 13", name="no_thirteen"), key=False
    )
    return audit, checked


class AuditedWriter:
    """Writes each item to ``audit`` and then to ``checked`` (no keys: a duplicate would
    show) in the chunk's transaction; ``checked`` refuses 13."""

    def __init__(self) -> None:
        self.audit, self.checked = checked_tables()

    def write(self, items: list[int]) -> None:
        rows = [{"item": item} for item in items]
        insert_in_chunk(self.audit, rows)
        insert_in_chunk(self.checked, rows)


def test_sql_writer_skip_scan_undoes_everything_the_bad_item_wrote(
    run: Run, database_url: str
) -> None:
    engine = create_engine(database_url)
    checked_tables()[0].metadata.create_all(engine)
    engine.dispose()
    execution = run(
        load_step(CountingReader(25), AuditedWriter(), chunk_size=10).skip(
            on=(IntegrityError,), limit=5
        )
    )
    assert execution.status == BatchStatus.COMPLETED, execution.exit_message
    assert counters(only_step(execution)) == expected(
        read_count=25, write_count=24, commit_count=3, rollback_count=1, write_skip_count=1
    )
    # The failed chunk write and the savepoint of 13 left nothing behind, in either table.
    every_other = [i for i in range(1, 26) if i != 13]
    audit, checked = checked_tables()
    assert table_items(database_url, audit) == every_other
    assert table_items(database_url, checked) == every_other
