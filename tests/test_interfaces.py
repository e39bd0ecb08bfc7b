"""The extension points of batchd.interfaces: duck-typed objects and subclasses of the
Protocols both work, observers cannot break what they watch, and mypy checks user code."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import batchd
from batchd import (
    BatchStatus,
    ChunkListener,
    ItemStream,
    JobBuilder,
    JobListener,
    JobOperator,
    JobRegistry,
    Processor,
    Reader,
    SqlJobRepository,
    StepBuilder,
    StepListener,
    Writer,
)
from batchd.engine.listeners import CHUNK_HOOKS, JOB_HOOKS, STEP_HOOKS, notify
from batchd.interfaces import ExecutionObserver
from batchd.items import ListItemReader
from batchd.model import ChunkContext, ExecutionContext, JobExecution, StepExecution

ITEMS = [1, 2, 3, 4, 5, 6, 7]


# ------------------------------------------------------------- duck-typed: no base class


class DuckReader:
    def __init__(self, items: list[int]) -> None:
        self.items = items
        self.index = 0

    def open(self, ctx: ExecutionContext) -> None:
        self.index = ctx.get("duck.index", 0)

    def update(self, ctx: ExecutionContext) -> None:
        ctx["duck.index"] = self.index

    def close(self) -> None:
        pass

    def read(self) -> int | None:
        if self.index == len(self.items):
            return None
        self.index += 1
        return self.items[self.index - 1]


class DuckProcessor:
    def process(self, item: int) -> int | None:
        return item * 10


class DuckListener:
    def __init__(self) -> None:
        self.heard: list[str] = []

    def after_step(self, step_execution: StepExecution) -> None:
        self.heard.append(f"after_step {step_execution.status.value}")

    def on_chunk_error(self, ctx: ChunkContext, error: BaseException) -> None:
        self.heard.append(f"on_chunk_error {error}")


# ------------------------------------ subclasses of the Protocols: only what they need


class ProtocolReader(Reader[int], ItemStream):
    """Defines read, open and update; close is the Protocol's no-op."""

    def __init__(self, items: list[int]) -> None:
        self.items = items
        self.left: list[int] = []

    def open(self, ctx: ExecutionContext) -> None:
        self.left = self.items[ctx.get("protocol.done", 0) :]

    def update(self, ctx: ExecutionContext) -> None:
        ctx["protocol.done"] = len(self.items) - len(self.left)

    def read(self) -> int | None:
        return self.left.pop(0) if self.left else None


class ProtocolProcessor(Processor[int, int]):
    def process(self, item: int) -> int | None:
        return item * 10


class ProtocolListener(DuckListener, StepListener, ChunkListener):
    """The duck's two hooks; the four others are the Protocols' no-ops."""


class FailOnceWriter(Writer[int]):
    """Fails the first time it is given 50, so the run fails and its restart resumes."""

    def __init__(self) -> None:
        self.out: list[int] = []  # shared by the engine's copies of the writer
        self.failed: list[int] = []

    def write(self, items: list[int]) -> None:
        if 50 in items and not self.failed:
            self.failed.append(50)
            raise OSError("disk hiccup")
        self.out.extend(items)


@pytest.fixture
def operator(sqlite_url: str) -> Iterator[JobOperator]:
    repository = SqlJobRepository(sqlite_url)
    op = JobOperator(repository, JobRegistry(), heartbeat=0.2)
    yield op
    op.shutdown(wait=True)
    repository.dispose()


@pytest.mark.parametrize(
    ("reader", "processor", "listener"),
    [
        pytest.param(DuckReader(ITEMS), DuckProcessor(), DuckListener(), id="duck-typed"),
        pytest.param(
            ProtocolReader(ITEMS), ProtocolProcessor(), ProtocolListener(), id="subclassed"
        ),
    ],
)
def test_a_job_runs_and_restarts_from_the_streams_checkpoint(
    operator: JobOperator, reader: Any, processor: Any, listener: Any
) -> None:
    writer = FailOnceWriter()
    step = (
        StepBuilder("load")
        .reader(reader)
        .processor(processor)
        .writer(writer)
        .chunk_size(2)
        .listener(listener)
        .build()
    )
    operator.registry.register(JobBuilder("interfaces").step(step).build())

    failed = operator.start("interfaces", {"day": 1})
    restarted = operator.restart("interfaces")

    assert (failed.status, restarted.status) == (BatchStatus.FAILED, BatchStatus.COMPLETED)
    # Every item once: the restart began after the last committed chunk ([30, 40]).
    assert writer.out == [10, 20, 30, 40, 50, 60, 70]
    assert restarted.step_executions[0].read_count == 3
    assert listener.heard == [
        "on_chunk_error disk hiccup",
        "after_step FAILED",
        "after_step COMPLETED",
    ]


def test_duck_typed_objects_and_subclasses_match_the_runtime_protocols() -> None:
    for reader in (DuckReader(ITEMS), ProtocolReader(ITEMS), ListItemReader([])):
        assert isinstance(reader, Reader)
        assert isinstance(reader, ItemStream)
    assert isinstance(DuckProcessor(), Processor)
    assert isinstance(DuckListener(), StepListener) is False  # before_step is missing
    assert isinstance(ProtocolListener(), StepListener)
    assert not isinstance(ProtocolListener(), JobListener)


def test_the_engines_hook_names_are_the_protocols_methods() -> None:
    assert JOB_HOOKS == ("before_job", "after_job")
    assert set(CHUNK_HOOKS) == {
        "before_chunk",
        "after_chunk",
        "on_chunk_error",
        "on_skip_in_read",
        "on_skip_in_process",
        "on_skip_in_write",
    }
    assert set(STEP_HOOKS) - set(CHUNK_HOOKS) == {
        "before_step",
        "after_step",
        "before_partition",
        "after_partition",
        "on_partition_error",
    }


class RaisingObserver:
    def on_execution_created(self, execution: JobExecution) -> None:
        raise RuntimeError("observer bug")


class EndedObserver(ExecutionObserver):
    """Only on_execution_ended; on_execution_created is the Protocol's no-op."""

    def __init__(self) -> None:
        self.ended: list[BatchStatus] = []

    def on_execution_ended(self, execution: JobExecution) -> None:
        self.ended.append(execution.status)


def test_an_observer_that_raises_is_logged_and_does_not_stop_the_job(
    operator: JobOperator, caplog: pytest.LogCaptureFixture
) -> None:
    ended = EndedObserver()
    operator.add_observer(RaisingObserver())
    operator.add_observer(ended)
    step = StepBuilder("s").reader(DuckReader(ITEMS)).writer(lambda items: None).build()
    operator.registry.register(JobBuilder("observed").step(step).build())

    with caplog.at_level(logging.ERROR):
        execution = operator.start("observed", {})

    assert execution.status == BatchStatus.COMPLETED
    assert ended.ended == [BatchStatus.COMPLETED]
    assert "failed in on_execution_created" in caplog.text
    assert "observer bug" in caplog.text


def test_notify_skips_an_object_without_the_hook_and_logs_one_that_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heard: list[tuple[str, str]] = []

    class Metrics:
        def on_schedule_fire(self, name: str, outcome: str) -> None:
            heard.append((name, outcome))

        def on_watch_file(self, watch: str, outcome: str) -> None:
            raise ValueError("bad label")

    notify(None, "on_schedule_fire", "eod", "started")
    notify(Metrics(), "on_control_request", "ping", "ok")
    notify(Metrics(), "on_schedule_fire", "eod", "started")
    with caplog.at_level(logging.ERROR):
        notify(Metrics(), "on_watch_file", "inbox", "rejected")

    assert heard == [("eod", "started")]
    assert "failed in on_watch_file" in caplog.text


# ----------------------------------------------------------------------------- mypy

USER_MODULE = """
from __future__ import annotations

from batchd import JobBuilder, StepBuilder, StepListener, Writer
from batchd.model import StepExecution


class Numbers:
    def __init__(self) -> None:
        self.left = [1, 2, 3]

    def read(self{read_args}) -> int | None:
        return self.left.pop(0) if self.left else None


class Printer(Writer[int]):
    def write(self, items: list[int]) -> None:
        print(sum(items))


class Done(StepListener):
    def after_step(self, step_execution: StepExecution) -> None:
        print(step_execution.status)


step = (
    StepBuilder("load").reader(Numbers()).processor(lambda item: item * 2)
    .writer(Printer()).listener(Done()).build()
)
job = JobBuilder("typed").step(step).build()
"""


@pytest.mark.slow
def test_mypy_strict_checks_user_code_against_the_protocols(tmp_path: Path) -> None:
    (tmp_path / "good_job.py").write_text(textwrap.dedent(USER_MODULE.format(read_args="")))
    (tmp_path / "bad_job.py").write_text(USER_MODULE.format(read_args=", count: int"))
    repo = Path(batchd.__file__).resolve().parent.parent
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "good_job.py",
            "bad_job.py",
        ],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(repo)},
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 1, result.stdout + result.stderr
    assert errors, result.stdout
    assert all(line.startswith("bad_job.py:") for line in errors), result.stdout
    assert any('"reader" of "StepBuilder"' in line and "Reader" in line for line in errors)
