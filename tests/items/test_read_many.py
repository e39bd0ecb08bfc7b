"""CsvItemReader.read_many (the chunk loop's batch read): the same items and errors as
read() one by one, the same position saved after them, and inside a job the same chunks,
counts, checkpoints and restart as a step that reads item by item."""

from __future__ import annotations

import copy
import dataclasses
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.errors import ItemParseError
from batchd.items import CsvItemReader, csv_items
from batchd.items.convert import ItemModel
from tests.items.helpers import make_ctx
from tests.items.test_csv_read_ahead import Row, odd_file, outcomes


def batched(reader: CsvItemReader, ctx: Any, n: int) -> list[tuple[Any, ...]]:
    """Each read_many(n)'s items or error, with the position saved just after the call."""
    reader.open(ctx)
    calls: list[tuple[Any, ...]] = []
    try:
        while True:
            try:
                items: list[Any] = reader.read_many(n)
            except ItemParseError as error:
                items = [("error", error.line, error.field, str(error))]
            reader.update(ctx)
            calls.append((items, ctx["CsvItemReader.offset"], ctx["CsvItemReader.line"]))
            if not items:
                return calls
    finally:
        reader.close()


@pytest.mark.parametrize("model", [None, Row])
@pytest.mark.parametrize("n", [1, 7, 512, 1000, 5000])
@pytest.mark.parametrize("ranged", [False, True], ids=["read-ahead", "byte-range"])
@pytest.mark.parametrize("block", [None, 100], ids=["64k-blocks", "100-byte-blocks"])
def test_read_many_hands_out_raises_and_saves_what_read_does(
    tmp_path: Path, model: Any, n: int, ranged: bool, block: int | None, monkeypatch: Any
) -> None:
    if block is not None:  # many blocks: records spanning lines across their ends
        monkeypatch.setattr(csv_items, "_READ_AHEAD", block)
    path = odd_file(tmp_path / "odd.csv")
    partition = {"start_offset": 0, "end_offset": path.stat().st_size} if ranged else None
    one_by_one = outcomes(copy.copy(CsvItemReader(path, model=model)), make_ctx())
    calls = batched(copy.copy(CsvItemReader(path, model=model)), make_ctx(partition=partition), n)
    done = 0
    for items, offset, line in calls[:-1]:
        assert 1 <= len(items) <= n
        assert items == [entry[0] for entry in one_by_one[done : done + len(items)]]
        done += len(items)
        # A full call saves what read() saves after its last item; a short one (cut by the
        # end or an error) what read() saves after the read that returned None or raised.
        short = len(items) < n and not isinstance(items[0], tuple)  # an error is one read
        assert (offset, line) == one_by_one[done if short else done - 1][1:], done
    assert calls[-1] == ([], *one_by_one[done][1:])
    assert one_by_one[done][0] is None and done == len(one_by_one) - 1


class ItemByItem(CsvItemReader):
    """The same reader without its batch read: the engine calls read() once per item."""

    read_many = None  # type: ignore[assignment]


class Batched(CsvItemReader):
    """The reader, counting the engine's read_many calls (in a list its copies share)."""

    calls: list[int] = []

    def read_many(self, n: int) -> list[Any]:
        self.calls.append(n)
        return super().read_many(n)


class FailingWriter:
    """Keeps what it was given; raises once when given the item with ``id`` == ``at``."""

    def __init__(self, written: list[Any], at: str) -> None:
        self.written, self.at, self.armed = written, at, [True]

    def write(self, items: list[dict[str, str]]) -> None:
        if self.armed[0] and any(item["id"] == self.at for item in items):
            self.armed[0] = False
            raise RuntimeError("simulated crash")
        self.written.extend(items)


def run_twice(tmp_path: Path, reader_class: type[CsvItemReader], source: Path) -> Any:
    """A job that fails in its third chunk and is restarted: what it wrote, each run's
    status and counters, and each run's last checkpoint."""
    repository = SqlJobRepository(f"sqlite:///{tmp_path / reader_class.__name__}.db")
    written: list[Any] = []
    step = (
        StepBuilder("load")
        .reader(reader_class(source, name="source"))
        .writer(FailingWriter(written, at="1100"))
        .chunk_size(500)
        .build()
    )
    registry = JobRegistry()
    registry.register(JobBuilder("import").step(step).build())
    operator = JobOperator(repository, registry, max_concurrent_jobs=1)
    runs = []
    try:
        for execution in (operator.start("import"), operator.restart("import")):
            (step_execution,) = execution.step_executions
            runs.append(
                (
                    execution.status,
                    step_execution.counters(),
                    dict(step_execution.execution_context),
                )
            )
    finally:
        operator.shutdown(wait=True)
        repository.dispose()
    return written, runs


def test_a_job_reads_chunks_and_restarts_as_with_one_read_per_item(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    rows = [
        f'{i},"name {i}\nsecond line"' if i % 333 == 0 else f"{i},name {i}" for i in range(1, 2301)
    ]
    source.write_text("id,name\n" + "\n".join(rows) + "\n")
    batch = run_twice(tmp_path, Batched, source)
    per_item = run_twice(tmp_path, ItemByItem, source)
    assert batch == per_item
    # The chunks were read in a few calls each: 500 items, then what is left of them.
    assert Batched.calls[:3] == [500, 500, 500] and len(Batched.calls) < 20
    written, runs = batch
    assert [status for status, _, _ in runs] == [BatchStatus.FAILED, BatchStatus.COMPLETED]
    # Every item once, in order, once the chunk that failed is written again.
    assert [item["id"] for item in written] == [str(i) for i in range(1, 2301)]
    assert runs[1][1]["read_count"] == 1300 and runs[1][1]["commit_count"] == 3


@dataclasses.dataclass
class Payment:
    id: int
    payer: str
    amount: float
    fee: Decimal

    def __post_init__(self) -> None:
        if self.id % 250 == 7:
            raise ValueError("id is reserved")


@pytest.mark.parametrize("blank", [False, True], ids=["all-text", "a-blank-fee"])
def test_models_built_by_columns_are_those_built_one_by_one(tmp_path: Path, blank: bool) -> None:
    """Batches of records whose fields all convert are built a column at a time: the same
    items, the model's own errors at the same records, the same positions saved."""
    path = tmp_path / "payments.csv"
    lines = [
        f"{i},payer {i},{i}.5,{'' if blank and i == 900 else f'0.{i % 10}'},extra"
        for i in range(1, 1201)
    ]
    path.write_text("id,payer,amount,fee,note\n" + "\n".join(lines) + "\n")
    whole = {"start_offset": 0, "end_offset": path.stat().st_size}
    ahead = outcomes(copy.copy(CsvItemReader(path, model=Payment)), make_ctx())
    one_by_one = outcomes(copy.copy(CsvItemReader(path, model=Payment)), make_ctx(partition=whole))
    assert ahead == one_by_one
    errors = [entry[0] for entry in ahead if isinstance(entry[0], tuple)]
    assert [error[1] for error in errors] == [
        1 + i for i in range(1, 1201) if i % 250 == 7 or (blank and i == 900)
    ]
    assert ahead[0][0] == Payment(1, "payer 1", 1.5, Decimal("0.1"))


def test_build_leading_builds_what_it_can_and_leaves_the_rest_to_build() -> None:
    model = ItemModel(Payment)
    header = ["note", "id", "payer", "amount", "fee"]
    rows = [["", str(i), f"p{i}", "1.5", "0.25"] for i in range(1, 7)]
    built = [Payment(i, f"p{i}", 1.5, Decimal("0.25")) for i in range(1, 7)]
    assert model.build_leading(rows, header) == built
    assert model.build_leading([*rows[:3], ["", "7", "p", "1", "1"]], header) == built[:3]
    assert model.build_leading([*rows[:3], ["", "4", "p", "1", ""]], header) == []  # a blank
    assert model.build_leading([*rows[:3], ["", "4", "p", "x", "1"]], header) == []
    assert model.build_leading(rows, header[:-1]) == []  # no fee column
    assert ItemModel(None).build_leading(rows, header) == []


@dataclasses.dataclass(init=False)
class Swapped:
    id: int
    name: str

    def __init__(self, name: str, id: int) -> None:
        self.id, self.name = id, name


@dataclasses.dataclass(kw_only=True)
class KeywordsOnly:
    id: int
    name: str


@pytest.mark.parametrize("model", [Swapped, KeywordsOnly])
def test_a_model_whose_init_does_not_take_the_fields_in_order_is_built_by_keywords(
    model: Any,
) -> None:
    rows, header = [["1", "a"], ["2", "b"]], ["id", "name"]
    assert ItemModel(model).build_leading(rows, header) == []
    record = dict(zip(header, rows[0], strict=True))
    assert ItemModel(model).build(record, lambda *_: ValueError()) == model(id=1, name="a")
