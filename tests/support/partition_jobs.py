"""Partitioned jobs for the tests. Module-level, so that worker processes (spawned) and
Dask workers can unpickle their parts by reference."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select

from batchd import JobBuilder, StepBuilder
from batchd.engine import Job
from batchd.items import (
    CsvItemReader,
    CsvItemWriter,
    FileAggregator,
    FileLinePartitioner,
    SqlItemReader,
    SqlItemWriter,
    SqlKeyRangePartitioner,
)
from tests.support.jobs import keyed_table

metadata = MetaData()

source = keyed_table("part_source", metadata, value=String(50))

# No key: a row written twice would show as a duplicate instead of an error.
sink = Table(
    "part_sink",
    metadata,
    Column("id", Integer, nullable=False),
    Column("value", String(50), nullable=False),
    Column("pid", Integer, nullable=False),
)

POISON = "poison"


def fill_source(url: str, rows: int, *, poison: frozenset[int] = frozenset()) -> None:
    """Tables created empty, ``rows`` source rows; ids in ``poison`` hold the poison value."""
    engine = create_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    values = [{"id": i, "value": POISON if i in poison else f"v{i}"} for i in range(1, rows + 1)]
    if values:
        with engine.begin() as conn:
            conn.execute(insert(source), values)
    engine.dispose()


def fix_poison(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(source.update().where(source.c.value == POISON).values(value="fixed"))
    engine.dispose()


def sink_rows(url: str) -> list[tuple[int, str, int]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(sink.c.id, sink.c.value, sink.c.pid).order_by(sink.c.id))
        result = [tuple(row) for row in rows]
    engine.dispose()
    return result  # type: ignore[return-value]


class Upper:
    """Fails on a poisoned row; optionally slow, to give a stop time to arrive."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["value"] == POISON:
            raise ValueError(f"row {row['id']} is poisoned")
        if self.delay:
            time.sleep(self.delay)
        return {"id": row["id"], "value": row["value"].upper(), "pid": os.getpid()}


class DieOnce:
    """Kills the process it runs in at row ``row_id``, the first time only (a marker file
    remembers across processes): a worker process or Dask worker that dies mid-partition."""

    def __init__(self, row_id: int, marker: Path, *, always: bool = False) -> None:
        self.row_id = row_id
        self.marker = str(marker)
        self.always = always

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["id"] == self.row_id and (self.always or not os.path.exists(self.marker)):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return {"id": row["id"], "value": row["value"].upper(), "pid": os.getpid()}


class LockedReader(SqlItemReader):
    """A reader holding a lock: cannot be pickled, so it cannot go to a worker process."""

    def __init__(self, url: str) -> None:
        super().__init__(url, source, key="id")
        self.lock = threading.Lock()


def partitioned_job(
    url: str,
    executor: Any,
    *,
    partitions: int = 4,
    chunk_size: int = 50,
    processor: Any = None,
    reader: Any = None,
    partitioner: Any = None,
    name: str = "partitioned",
    listener: Any = None,
) -> Job:
    """Reads ``part_source`` by key range, processes, writes ``part_sink`` in the chunk's
    transaction (the repository's database), so every row is written exactly once."""
    step = (
        StepBuilder("copy")
        .reader(reader or SqlItemReader(url, source, key="id", page_size=100))
        .processor(processor or Upper())
        .writer(SqlItemWriter(url, sink))
        .chunk_size(chunk_size)
        .partitioner(
            partitioner or SqlKeyRangePartitioner(url, "part_source", "id"),
            partitions=partitions,
        )
        .executor(executor)
    )
    if listener is not None:
        step = step.listener(listener)
    return JobBuilder(name).step(step.build()).build()


class FailWhile:
    """Raises at row ``row_id`` while ``marker`` exists (the data is 'fixed' by removing
    it): a failure that does not change the input file's byte offsets."""

    def __init__(self, row_id: int, marker: Path) -> None:
        self.row_id = row_id
        self.marker = str(marker)

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        if int(row["id"]) == self.row_id and os.path.exists(self.marker):
            raise ValueError(f"row {row['id']} is locked")
        return {"id": row["id"], "name": row["name"].upper()}


def file_job(workdir: Path, executor: Any, marker: Path, *, partitions: int = 4) -> Job:
    """in.csv, split by line ranges, written one part file per partition, merged into
    out/all.csv by a FileAggregator."""
    parts = str(workdir / "out" / "part{partition[index]:04d}.csv")
    step = (
        StepBuilder("convert")
        .reader(CsvItemReader(workdir / "in.csv"))
        .processor(FailWhile(700, marker))
        .writer(CsvItemWriter(parts))
        .chunk_size(25)
        .partitioner(FileLinePartitioner(workdir / "in.csv"), partitions=partitions)
        .aggregator(FileAggregator(workdir / "out" / "all.csv", parts=parts, header_lines=1))
        .executor(executor)
        .build()
    )
    return JobBuilder("files").step(step).build()
