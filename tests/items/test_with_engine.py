"""The item classes inside real jobs: a failure midway, a restart, and output that is the
same as an uninterrupted run's (files byte for byte, database rows exactly once)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, Numeric, String, Table, func, select

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.items import (
    CompositeItemWriter,
    CsvItemReader,
    CsvItemWriter,
    FixedWidthItemWriter,
    JsonLinesItemWriter,
    SqlItemReader,
    SqlItemWriter,
)
from batchd.items.sql_items import dispose_engines


class Params(BaseModel):
    date: date


class Payment(BaseModel):
    id: int
    payer: str
    amount: Decimal


class FailOnce:
    """A processor that raises once on item ``at`` (a crash in the middle of the step)."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.armed = {"armed": at is not None}  # shared by the engine's copies

    def process(self, item: Payment) -> dict[str, Any]:
        if self.armed["armed"] and item.id == self.at:
            self.armed["armed"] = False
            raise RuntimeError("simulated crash")
        return {"id": item.id, "payer": item.payer.upper(), "amount": item.amount}


@pytest.fixture
def repository(database_url: str) -> Iterator[SqlJobRepository]:
    repo = SqlJobRepository(database_url)
    yield repo
    repo.dispose()
    dispose_engines()


def make_input(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["id,payer,amount"]
    for i in range(1, 48):
        lines.append(f"{i},payer{i},{'oops' if i % 10 == 0 else f'{i}.25'}")
    path = directory / "payments_20261121.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_job(
    repository: SqlJobRepository, database_url: str, root: Path, fail_at: int | None
) -> tuple[dict[str, bytes], list[tuple[Any, ...]], list[Any]]:
    make_input(root / "in")
    metadata = MetaData()
    table = Table(
        f"ledger_{root.name}",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("payer", String(40)),
        Column("amount", Numeric(10, 2)),
    )
    metadata.create_all(repository.engine)
    processor = FailOnce(fail_at)
    fields = ["id", "payer", "amount"]
    step = (
        StepBuilder("post")
        .reader(CsvItemReader(str(root / "in" / "payments_{date:%Y%m%d}.csv"), model=Payment))
        .processor(processor)
        .writer(
            CompositeItemWriter(
                CsvItemWriter(
                    str(root / "out" / "report_{date:%Y%m%d}.csv"), fields=fields, checksum=True
                ),
                JsonLinesItemWriter(str(root / "out" / "report_{date:%Y%m%d}.jsonl")),
                FixedWidthItemWriter(
                    str(root / "out" / "report_{date:%Y%m%d}.txt"),
                    [("id", 4, int), ("payer", 10), ("amount", 8, Decimal)],
                ),
                SqlItemWriter(database_url, table),
            )
        )
        .chunk_size(7)
        .skip(on=(ValueError,), limit=10)
        .build()
    )
    name = f"eod_{root.name}"  # one job per run: both use the same repository
    job = JobBuilder(name).params_model(Params).step(step).build()
    registry = JobRegistry()
    registry.register(job)
    op = JobOperator(repository, registry, max_concurrent_jobs=1)
    try:
        execution = op.start(name, {"date": "2026-11-21"})
        statuses = [execution.status]
        if fail_at is not None:
            assert execution.status == BatchStatus.FAILED
            assert not (root / "out" / "report_20261121.csv").exists()
            execution = op.restart(name)
            statuses.append(execution.status)
        assert execution.status == BatchStatus.COMPLETED, execution.exit_message
    finally:
        op.shutdown(wait=True)
    files = {p.name: p.read_bytes() for p in sorted((root / "out").iterdir())}
    with repository.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(select(table).order_by(table.c.id))]
        assert conn.execute(select(func.count()).select_from(table)).scalar_one() == len(rows)
    return files, rows, statuses


def test_restart_output_equals_uninterrupted_run(
    repository: SqlJobRepository, database_url: str, tmp_path: Path
) -> None:
    expected_files, expected_rows, _ = run_job(repository, database_url, tmp_path / "a", None)
    assert len(expected_rows) == 47 - 4  # rows 10, 20, 30, 40 skipped
    assert set(expected_files) == {
        "report_20261121.csv",
        "report_20261121.csv.sha256",
        "report_20261121.jsonl",
        "report_20261121.txt",
    }
    files, rows, statuses = run_job(repository, database_url, tmp_path / "b", 33)
    assert statuses == [BatchStatus.FAILED, BatchStatus.COMPLETED]
    assert rows == expected_rows
    assert {k: v for k, v in files.items() if not k.endswith(".sha256")} == {
        k: v for k, v in expected_files.items() if not k.endswith(".sha256")
    }
    assert files["report_20261121.csv.sha256"] == expected_files["report_20261121.csv.sha256"]


def test_sql_to_sql_on_the_repository_database(
    repository: SqlJobRepository, database_url: str
) -> None:
    metadata = MetaData()
    source = Table("src", metadata, Column("id", Integer, primary_key=True), Column("v", Integer))
    sink = Table("sink", metadata, Column("id", Integer, primary_key=True), Column("v", Integer))
    metadata.create_all(repository.engine)
    with repository.engine.begin() as conn:
        conn.execute(source.insert(), [{"id": i, "v": i * i} for i in range(1, 101)])

    def double(item: dict[str, Any]) -> dict[str, Any]:
        if item["id"] == 64 and not double.failed:  # type: ignore[attr-defined]
            double.failed = True  # type: ignore[attr-defined]
            raise RuntimeError("simulated crash")
        return {"id": item["id"], "v": item["v"] * 2}

    double.failed = False  # type: ignore[attr-defined]
    step = (
        StepBuilder("copy")
        .reader(SqlItemReader(database_url, source, key="id", page_size=16))
        .processor(double)
        .writer(SqlItemWriter(database_url, "sink"))  # a plain INSERT: a replay would fail
        .chunk_size(10)
        .build()
    )
    registry = JobRegistry()
    registry.register(JobBuilder("copy").step(step).build())
    op = JobOperator(repository, registry, max_concurrent_jobs=1)
    try:
        assert op.start("copy", {}).status == BatchStatus.FAILED
        with repository.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(sink)).scalar_one() == 60
        restarted = op.restart("copy")
        assert restarted.status == BatchStatus.COMPLETED, restarted.exit_message
    finally:
        op.shutdown(wait=True)
    with repository.engine.connect() as conn:
        got = conn.execute(select(sink.c.v).order_by(sink.c.id)).scalars().all()
    assert got == [2 * i * i for i in range(1, 101)]
