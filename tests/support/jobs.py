"""Jobs the engine tests run, in this process or in child processes."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert

from batchd import JobBuilder, JobRegistry, StepBuilder, StepContext
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


def output_table(metadata: MetaData | None = None) -> Table:
    return Table(
        "test_output",
        metadata or MetaData(),
        Column("item", Integer, primary_key=True),
        Column("note", String(50)),
    )


class SqlTableWriter:
    """Inserts each item into ``test_output`` in the chunk's own transaction when it can
    (the repository's database), which makes output exactly-once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.table = output_table()

    def write(self, items: list[int]) -> None:
        chunk = current_chunk_transaction.get()
        assert chunk is not None, "chunk steps publish their transaction"
        chunk.connection.execute(
            insert(self.table), [{"item": item, "note": "x"} for item in items]
        )


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
    name: str, reader: Any, writer: Any, *, chunk_size: int = 10, processor: Any = None
) -> Any:
    builder = StepBuilder("load").reader(reader).writer(writer).chunk_size(chunk_size)
    if processor is not None:
        builder = builder.processor(processor)
    return JobBuilder(name).step(builder.build()).build()


def child_registry(url: str, workdir: Path) -> JobRegistry:
    """The jobs that child processes run (see tests/support/child.py)."""
    registry = JobRegistry()
    registry.register(
        chunk_job(
            "slow_count",
            CountingReader(int(os.environ.get("BATCHD_TEST_ITEMS", "200"))),
            JsonLinesLog(workdir / "written.jsonl"),
            chunk_size=5,
            processor=slow_processor(float(os.environ.get("BATCHD_TEST_DELAY", "0.005"))),
        )
    )
    registry.register(
        chunk_job(
            "slow_sql",
            CountingReader(int(os.environ.get("BATCHD_TEST_ITEMS", "200"))),
            SqlTableWriter(url),
            chunk_size=5,
            processor=slow_processor(float(os.environ.get("BATCHD_TEST_DELAY", "0.005"))),
        )
    )
    return registry


def write_input_csv(path: Path, rows: int) -> None:
    """An input file of ``rows`` numbered rows: id, name, amount."""
    lines = ["id,name,amount"] + [
        f"{i},name-{i},{i * 3 % 1000}.{i % 100:02d}" for i in range(1, rows + 1)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def target_table(metadata: MetaData | None = None) -> Table:
    return Table(
        "target",
        metadata or MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(50), nullable=False),
        Column("amount", String(20), nullable=False),
    )


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
