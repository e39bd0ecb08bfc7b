"""FileAggregator: the partitions' files merged in order under one header, published
atomically, safe to re-run after a crash; every bad input named in its error."""

from __future__ import annotations

import copy
import os
import pickle
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from batchd.errors import ChecksumMismatch, InputFileNotFound, PathTemplateError
from batchd.items import CsvItemReader, CsvItemWriter, FileAggregator, FileLinePartitioner
from batchd.items.files import file_digest
from batchd.model import PARTITION_KEY, BatchStatus, StepExecution
from tests.items.helpers import make_ctx, read_all, run_writer


class Params(BaseModel):
    day: date


PARAMS = Params(day=date(2026, 11, 21))
PARTS = "out/report_{day:%Y%m%d}.part{partition[index]:04d}.csv"
TARGET = "out/report_{day:%Y%m%d}.csv"


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def executions(count: int) -> list[StepExecution]:
    """The partitions' StepExecutions, as the engine hands them to the aggregator."""
    return [
        StepExecution(
            id=10 + i,
            job_execution_id=1,
            step_name=f"export:partition{i}",
            status=BatchStatus.COMPLETED,
            execution_context={PARTITION_KEY: {"index": i}, "CsvItemWriter.size": 1},
        )
        for i in range(count)
    ]


PARENT = StepExecution(id=9, job_execution_id=1, step_name="export", status=BatchStatus.STARTED)


def write_parts(rows: list[list[dict[str, Any]]], **writer: Any) -> list[Path]:
    """Each partition's CSV, written by its own CsvItemWriter copy (header included)."""
    for i, items in enumerate(rows):
        ctx = make_ctx(params=PARAMS, partition={"index": i})
        run_writer(CsvItemWriter(PARTS, **writer), [items] if items else [], ctx)
    return [Path(f"out/report_20261121.part{i:04d}.csv") for i in range(len(rows))]


def aggregate(aggregator: FileAggregator, count: int, params: Any = PARAMS) -> None:
    """What the engine does: a copy, opened with the parent step's context, then closed."""
    agg = copy.copy(aggregator)
    agg.open(make_ctx(params=params))
    try:
        agg.aggregate(PARENT, executions(count))
    finally:
        agg.close()


def rows(start: int, stop: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"n{i}"} for i in range(start, stop)]


ROWS = [rows(0, 3), rows(3, 4), rows(4, 8)]
MERGED = "id,name\n" + "".join(f"{i},n{i}\n" for i in range(8))


def test_parts_merged_in_order_under_one_header() -> None:
    write_parts(ROWS)
    aggregate(FileAggregator(TARGET, parts=PARTS, header_lines=1), 3)
    assert Path("out/report_20261121.csv").read_text() == MERGED
    assert os.listdir("out") == ["report_20261121.csv"]  # parts removed, nothing partial left


def test_checksum_sidecars_and_parts_kept() -> None:
    parts = write_parts(ROWS, checksum=True)  # each part has a sidecar, verified when merged
    aggregate(FileAggregator(TARGET, parts=PARTS, header_lines=1, checksum=True), 3)
    target = "out/report_20261121.csv"
    assert Path(target + ".sha256").read_text() == (
        f"{file_digest(target, 'sha256')}  report_20261121.csv\n"
    )
    assert sorted(os.listdir("out")) == ["report_20261121.csv", "report_20261121.csv.sha256"]

    write_parts(ROWS, checksum=True)
    aggregate(FileAggregator(TARGET, parts=PARTS, header_lines=1, remove_parts=False), 3)
    assert all(p.exists() and Path(f"{p}.sha256").exists() for p in parts)
    assert Path(target).read_text() == MERGED


def test_a_corrupt_part_is_refused() -> None:
    parts = write_parts(ROWS, checksum=True)
    parts[1].write_text("id,name\n3,tampered\n")
    with pytest.raises(ChecksumMismatch, match=r"report_20261121.part0001.csv does not match"):
        aggregate(FileAggregator(TARGET, parts=PARTS, header_lines=1), 3)
    assert sorted(os.listdir("out")) == sorted(
        name for p in parts for name in (p.name, f"{p.name}.sha256")
    )


def test_re_run_after_publishing_is_safe(caplog: pytest.LogCaptureFixture) -> None:
    parts = write_parts(ROWS)
    aggregator = FileAggregator(TARGET, parts=PARTS, header_lines=1)
    target = Path("out/report_20261121.csv")

    # Crash after the target was published, before the parts were removed: merged again.
    aggregate(FileAggregator(TARGET, parts=PARTS, header_lines=1, remove_parts=False), 3)
    aggregate(aggregator, 3)
    assert target.read_text() == MERGED and not any(p.exists() for p in parts)

    # Crash after the parts were removed, before the step was recorded: nothing to do.
    with caplog.at_level("INFO", logger="batchd.items.aggregators"):
        aggregate(aggregator, 3)
    assert target.read_text() == MERGED
    assert "report_20261121.csv is already published" in caplog.text

    # Crash halfway through removing the parts: the removal is finished.
    write_parts(ROWS)
    aggregate(FileAggregator(TARGET, parts=PARTS, header_lines=1, remove_parts=False), 3)
    Path("out/.report_20261121.csv.removing-parts").touch()
    parts[0].unlink()
    aggregate(aggregator, 3)
    assert target.read_text() == MERGED
    assert os.listdir("out") == ["report_20261121.csv"]


def test_some_parts_missing_is_an_error_naming_them() -> None:
    parts = write_parts([*ROWS, rows(8, 9)])
    parts[1].unlink()
    parts[3].unlink()
    aggregator = FileAggregator(TARGET, parts=PARTS, header_lines=1)
    with pytest.raises(InputFileNotFound, match=r"2 of 4 part files are missing") as caught:
        aggregate(aggregator, 4)
    assert "part0001.csv" in str(caught.value) and "part0003.csv" in str(caught.value)
    assert caught.value.filename == "out/report_20261121.part0001.csv"
    assert not Path("out/report_20261121.csv").exists()

    # A target from an earlier run is not touched either (and the parts are not removed).
    Path("out/report_20261121.csv").write_text("earlier\n")
    with pytest.raises(InputFileNotFound, match=r"report_20261121.csv was not touched"):
        aggregate(aggregator, 4)
    assert Path("out/report_20261121.csv").read_text() == "earlier\n"
    assert parts[0].exists() and parts[2].exists()


def test_never_a_half_written_target() -> None:
    parts = write_parts(ROWS)
    parts[1].unlink()
    parts[1].mkdir()  # a part that cannot be read, after the first was copied
    aggregator = FileAggregator(TARGET, parts=PARTS, header_lines=1)
    with pytest.raises(IsADirectoryError):
        aggregate(aggregator, 3)
    assert sorted(os.listdir("out")) == sorted(p.name for p in parts)  # no target, no partial

    Path("out/report_20261121.csv").write_text("earlier\n")
    with pytest.raises(IsADirectoryError):
        aggregate(aggregator, 3)
    assert Path("out/report_20261121.csv").read_text() == "earlier\n"  # as it was
    assert not Path("out/.report_20261121.csv.partial").exists()


def test_empty_parts_and_the_header() -> None:
    # Partitions that read nothing: a writer without fields= writes no header then.
    write_parts([[], rows(0, 2), [], rows(2, 3)])
    aggregate(FileAggregator(TARGET, parts=PARTS, header_lines=1), 4)
    assert Path("out/report_20261121.csv").read_text() == "id,name\n0,n0\n1,n1\n2,n2\n"

    write_parts([[], []])
    aggregate(FileAggregator(TARGET, parts=PARTS, header_lines=1), 2)
    assert Path("out/report_20261121.csv").read_text() == ""


def test_parts_with_different_headers_are_an_error() -> None:
    write_parts([rows(0, 2)])
    run_writer(
        CsvItemWriter("out/report_20261121.part0001.csv", fields=["name", "id"]), [rows(2, 3)]
    )
    with pytest.raises(ValueError, match=r"part out/report_20261121.part0001.csv starts with"):
        aggregate(FileAggregator(TARGET, parts=PARTS, header_lines=1), 2)
    assert not Path("out/report_20261121.csv").exists()


def test_without_header_and_without_final_line_break() -> None:
    Path("out").mkdir()
    Path("out/a.0.txt").write_bytes(b"one\r\ntwo")  # no line break at the end
    Path("out/a.1.txt").write_bytes(b"three\n")
    aggregate(FileAggregator("out/a.txt", parts="out/a.{partition[index]}.txt"), 2, {})
    assert Path("out/a.txt").read_bytes() == b"one\r\ntwo\nthree\n"


def test_partition_then_aggregate_round_trip() -> None:
    """The whole story: a CSV split by lines, each partition copied to its part, merged."""
    source = Path("in.csv")
    source.write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(50)))
    contexts = FileLinePartitioner("in.csv").partition(4, {})
    for partition in contexts:
        items = read_all(CsvItemReader(source), make_ctx(partition=partition))
        ctx = make_ctx(params=PARAMS, partition=partition)
        run_writer(CsvItemWriter(PARTS, fields=["id", "name"]), [items], ctx)
    aggregate(FileAggregator(TARGET, parts=PARTS, header_lines=1), len(contexts))
    assert Path("out/report_20261121.csv").read_bytes() == source.read_bytes()


def test_bad_arguments_are_named() -> None:
    write_parts(ROWS)
    with pytest.raises(ValueError, match=r"header_lines must be 0 or more, not -1"):
        FileAggregator(TARGET, parts=PARTS, header_lines=-1)
    same = FileAggregator(TARGET, parts="out/report_{day}.csv.part")
    with pytest.raises(ValueError, match=r"the part of partition 1, .* is also the part of par"):
        aggregate(same, 3)
    with pytest.raises(ValueError, match=r"is also the target"):
        aggregate(FileAggregator(TARGET, parts=TARGET), 1)
    with pytest.raises(RuntimeError, match="FileAggregator is not open"):
        FileAggregator(TARGET, parts=PARTS).aggregate(PARENT, executions(3))
    agg = copy.copy(FileAggregator(TARGET, parts=PARTS))
    agg.open(make_ctx(params=PARAMS))
    with pytest.raises(ValueError, match=r"step execution 9 \('export'\) has no partition"):
        agg.aggregate(PARENT, [PARENT])
    with pytest.raises(PathTemplateError, match=r"needs the job parameter 'day'"):
        aggregate(FileAggregator(TARGET, parts=PARTS), 3, {})


def test_copies_and_pickles_leave_the_context_out() -> None:
    write_parts(ROWS)
    aggregator = FileAggregator(TARGET, parts=PARTS, header_lines=1)
    aggregator.open(make_ctx(params=PARAMS))
    for clone in (copy.copy(aggregator), pickle.loads(pickle.dumps(aggregator))):
        with pytest.raises(RuntimeError, match="not open"):
            clone.aggregate(PARENT, executions(3))
    aggregate(pickle.loads(pickle.dumps(aggregator)), 3)
    assert Path("out/report_20261121.csv").read_text() == MERGED
