"""Composite processors and writers through the engine, on SQLite and PostgreSQL: every inner
component is opened, checkpointed, completed and closed, and restarts exactly once."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from batchd import BatchStatus, ExecutionContext, JobBuilder, JobOperator, JobRegistry, StepBuilder
from batchd.items import CsvItemWriter, JsonLinesItemWriter, ListItemReader
from batchd.items.composite import CompositeItemProcessor, CompositeItemWriter

ROWS = [{"id": i, "amount": i * 10} for i in range(1, 11)]


class FailOnce:
    """A writer that fails the first time it sees ``bad_id`` (its copies share that
    memory), and otherwise writes nothing."""

    def __init__(self, bad_id: int) -> None:
        self.bad_id = bad_id
        self.seen = {"failed": False}

    def write(self, items: list[dict[str, Any]]) -> None:
        if not self.seen["failed"] and any(item["id"] == self.bad_id for item in items):
            self.seen["failed"] = True
            raise OSError("share unavailable")


def test_a_composite_writer_writes_every_output_once_across_a_restart(
    operator: JobOperator, registry: JobRegistry, tmp_path: Path
) -> None:
    flaky = FailOnce(bad_id=7)
    writer = CompositeItemWriter(
        CsvItemWriter(tmp_path / "a.csv", name="first_csv"),
        CsvItemWriter(tmp_path / "b.csv", fields=["id"], name="second_csv"),
        JsonLinesItemWriter(tmp_path / "c.jsonl"),
        flaky,
    )
    step = StepBuilder("export").reader(ListItemReader(ROWS)).writer(writer).chunk_size(3).build()
    registry.register(JobBuilder("export").step(step).build())
    first = operator.start("export", {"day": 1})
    assert first.status == BatchStatus.FAILED
    # Nothing is published while the step has not completed.
    assert not (tmp_path / "a.csv").exists()
    second = operator.restart("export")
    assert second.status == BatchStatus.COMPLETED
    assert second.step_executions[0].write_count == 4  # items 7..10, after two commits
    a = (tmp_path / "a.csv").read_text().splitlines()
    assert a[0] == "id,amount" and a[1:] == [f"{r['id']},{r['amount']}" for r in ROWS]
    assert (tmp_path / "b.csv").read_text().splitlines() == ["id"] + [str(r["id"]) for r in ROWS]
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == ROWS


def test_inner_writers_of_one_kind_need_distinct_names(
    operator: JobOperator, registry: JobRegistry, tmp_path: Path
) -> None:
    writer = CompositeItemWriter(CsvItemWriter(tmp_path / "a.csv"), CsvItemWriter(tmp_path / "b"))
    step = StepBuilder("export").reader(ListItemReader(ROWS)).writer(writer).build()
    registry.register(JobBuilder("clash").step(step).build())
    execution = operator.start("clash", {})
    assert execution.status == BatchStatus.FAILED
    assert "under 'CsvItemWriter': give each a distinct name=" in (execution.exit_message or "")


def test_a_processor_chain_runs_in_order_and_stops_at_a_filter(
    operator: JobOperator, registry: JobRegistry
) -> None:
    written: list[Any] = []
    chain = CompositeItemProcessor(
        lambda row: row if row["id"] % 2 else None,  # odd rows only
        lambda row: {**row, "amount": row["amount"] + 1},
    )
    step = (
        StepBuilder("odd").reader(ListItemReader(ROWS)).processor(chain).writer(written.extend)
    ).build()
    registry.register(JobBuilder("odd").step(step).build())
    execution = operator.start("odd", {})
    assert execution.status == BatchStatus.COMPLETED
    assert [row["amount"] for row in written] == [11, 31, 51, 71, 91]
    counts = execution.step_executions[0]
    assert (counts.read_count, counts.filter_count, counts.write_count) == (10, 5, 5)


def test_each_copy_of_a_composite_has_its_own_inner_components(tmp_path: Path) -> None:
    writer = CompositeItemWriter(JsonLinesItemWriter(tmp_path / "x.jsonl"), FailOnce(1))
    clone = copy.copy(writer)
    assert all(a is not b for a, b in zip(writer.components, clone.components, strict=True))
    ctx = ExecutionContext()
    clone.open(ctx)
    clone.write([{"id": 2}])  # reaches the clone's own (opened) JSON Lines writer
    clone.update(ctx)
    clone.complete(ctx)
    clone.close()
    assert (tmp_path / "x.jsonl").read_text() == '{"id":2}\n'
    with pytest.raises(RuntimeError, match="not open"):
        writer.write([{"id": 3}])  # the original's inner writer was never opened
