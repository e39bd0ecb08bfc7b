"""Jobs the engine tests run, in this process or in child processes."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select

from batchd import JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder, StepContext
from batchd.engine import Job
from batchd.model import current_chunk_transaction


class CountingReader:
    """Reads the integers 1..n; restartable through the ExecutionContext."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.next = 1

    def open(self, ctx: dict[str, Any]) -> None:
        self.next = ctx.get("CountingReader.next", 1)

    def update(self, ctx: dict[str, Any]) -> None:
        ctx["CountingReader.next"] = self.next

    def close(self) -> None:
        pass

    def read(self) -> int | None:
        if self.next > self.n:
            return None
        value = self.next
        self.next += 1
        return value


class FaultyReader(CountingReader):
    """Reads 1..n like CountingReader, but reading a number in ``bad`` raises ValueError
    (after moving past it, as a reader that could not parse a record does)."""

    def __init__(self, n: int, bad: set[int]) -> None:
        super().__init__(n)
        self.bad = bad

    def read(self) -> int | None:
        item = super().read()
        if item in self.bad:
            raise ValueError(f"unreadable record {item}")
        return item


class JsonLinesLog:
    """A writer appending every written item as a JSON line to a file (flushed at once):
    what reaches it reaches the disk, committed or not, so duplicates show."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, items: list[Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            for item in items:
                out.write(json.dumps(item) + "\n")

    def items(self) -> list[Any]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


def item_table(name: str, metadata: MetaData, *more: Any, key: bool = True) -> Table:
    """A table of integer ``item``s (the key, unless ``key`` is false: then a row written
    twice shows), with ``more`` columns and constraints."""
    return Table(name, metadata, Column("item", Integer, primary_key=key, nullable=False), *more)


def keyed_table(name: str, metadata: MetaData, /, **required: Any) -> Table:
    """A table keyed by an integer ``id``, with a NOT NULL column of each type ``required``
    names (``keyed_table("t", metadata, name=String(50))``)."""
    columns = [Column(column, kind, nullable=False) for column, kind in required.items()]
    return Table(name, metadata, Column("id", Integer, primary_key=True), *columns)


def insert_in_chunk(table: Table, rows: list[dict[str, Any]]) -> None:
    """Inserts ``rows`` in the transaction of the chunk being written."""
    chunk = current_chunk_transaction.get()
    assert chunk is not None, "chunk steps publish their transaction"
    chunk.connection.execute(insert(table), rows)


def table_items(url: str, table: Table) -> list[int]:
    """The ``item``s of ``table`` in the database at ``url``, in order."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(table.c.item).order_by(table.c.item)).scalars())
    finally:
        engine.dispose()


def output_table(metadata: MetaData | None = None) -> Table:
    return item_table("test_output", metadata or MetaData(), Column("note", String(50)))


class SqlTableWriter:
    """Inserts each item into ``test_output`` in the chunk's own transaction when it can
    (the repository's database), which makes output exactly-once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.table = output_table()

    def write(self, items: list[int]) -> None:
        insert_in_chunk(self.table, [{"item": item, "note": "x"} for item in items])


def create_tables(url: str, *tables: Callable[[MetaData], Table]) -> None:
    """Create the tables that ``tables`` define, in the database at ``url``."""
    metadata = MetaData()
    for define in tables:
        define(metadata)
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()


def create_output_table(url: str) -> None:
    create_tables(url, output_table)


def slow_processor(delay: float) -> Any:
    def process(item: int) -> int:
        time.sleep(delay)
        return item

    return process


def blocking_tasklet(started: threading.Event, release: threading.Event) -> Any:
    """A tasklet that signals it runs, then waits for release or a stop request."""

    def tasklet(ctx: StepContext) -> None:
        started.set()
        while not release.is_set():
            ctx.check_stop()
            time.sleep(0.01)

    return tasklet


def chunk_job(
    name: str,
    reader: Any,
    writer: Any,
    *,
    chunk_size: int = 10,
    processor: Any = None,
    step: str = "load",
    skip: tuple[type[Exception], int] | None = None,
) -> Job:
    """A job of one chunk step; ``skip`` is (the error to skip, the skip limit)."""
    builder = StepBuilder(step).reader(reader).writer(writer).chunk_size(chunk_size)
    if processor is not None:
        builder = builder.processor(processor)
    if skip is not None:
        builder = builder.skip(on=skip[0], limit=skip[1])
    return JobBuilder(name).step(builder.build()).build()


def tasklet_job(name: str, tasklet: Any, *, step: str = "s", params_model: Any = None) -> Job:
    """A job of one tasklet step, its parameters checked by ``params_model`` if given."""
    builder = JobBuilder(name)
    if params_model is not None:
        builder = builder.params_model(params_model)
    return builder.step(StepBuilder(step).tasklet(tasklet).build()).build()


def registry_of(*jobs: Job) -> JobRegistry:
    registry = JobRegistry()
    for job in jobs:
        registry.register(job)
    return registry


def operator_for(url: str, *jobs: Job, clock: Any = None, **options: Any) -> JobOperator:
    """A JobOperator running ``jobs`` (none: one that only lists, stops and recovers) on a
    repository of its own at ``url``, with ``clock`` if given. The caller shuts it down and
    disposes of its repository."""
    repository = SqlJobRepository(url) if clock is None else SqlJobRepository(url, clock=clock)
    return JobOperator(repository, registry_of(*jobs), **options)


def child_registry(url: str, workdir: Path) -> JobRegistry:
    """The jobs that child processes run (see tests/support/child.py)."""
    items = int(os.environ.get("BATCHD_TEST_ITEMS", "200"))
    delay = float(os.environ.get("BATCHD_TEST_DELAY", "0.005"))
    writers = {
        "slow_count": JsonLinesLog(workdir / "written.jsonl"),
        "slow_sql": SqlTableWriter(url),
    }
    return registry_of(
        *(
            chunk_job(
                name, CountingReader(items), writer, chunk_size=5, processor=slow_processor(delay)
            )
            for name, writer in writers.items()
        )
    )


def write_input_csv(path: Path, rows: int) -> None:
    """An input file of ``rows`` numbered rows: id, name, amount."""
    lines = ["id,name,amount"] + [
        f"{i},name-{i},{i * 3 % 1000}.{i % 100:02d}" for i in range(1, rows + 1)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def target_table(metadata: MetaData | None = None) -> Table:
    return keyed_table("target", metadata or MetaData(), name=String(50), amount=String(20))


def create_target_table(url: str) -> None:
    create_tables(url, target_table)


def file_jobs(url: str, workdir: Path) -> JobRegistry:
    """Jobs over ``workdir/input.csv``: into the ``target`` table, and into three files."""
    from batchd.items import (
        Column as FixedColumn,
    )
    from batchd.items import (
        CsvItemReader,
        CsvItemWriter,
        FixedWidthItemWriter,
        JsonLinesItemWriter,
        SqlItemWriter,
    )

    delay = float(os.environ.get("BATCHD_TEST_DELAY", "0"))

    def slow(item: Any) -> Any:
        if delay:
            time.sleep(delay)
        return item

    registry = JobRegistry()
    registry.register(
        JobBuilder("csv_to_sql")
        .step(
            StepBuilder("load")
            .reader(CsvItemReader(workdir / "input.csv"))
            .processor(slow)
            .writer(SqlItemWriter(url, target_table()))
            .chunk_size(100)
            .build()
        )
        .build()
    )
    columns = [FixedColumn("id", 8, int), FixedColumn("name", 16), FixedColumn("amount", 10)]
    writers = {
        "csv": CsvItemWriter(workdir / "out.csv"),
        "jsonl": JsonLinesItemWriter(workdir / "out.jsonl"),
        "fixed": FixedWidthItemWriter(workdir / "out.txt", columns),
    }
    files = JobBuilder("csv_to_files")
    for label, writer in writers.items():
        files = files.step(
            StepBuilder(f"to_{label}")
            .reader(CsvItemReader(workdir / "input.csv"))
            .processor(slow)
            .writer(writer)
            .chunk_size(100)
            .build()
        )
    registry.register(files.build())
    return registry
