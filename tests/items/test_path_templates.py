"""Path templates keep a parameter from taking a path out of the template's fixed leading
directory (or the working directory), for writers, readers and partitioners; a job opts out
with trusted_path(); readers may also follow a parameter into a declared input directory."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.errors import InvalidJobParameters
from batchd.items import (
    CsvItemReader,
    CsvItemWriter,
    FileGlobPartitioner,
    FileLinePartitioner,
    ListItemReader,
    allow_input_directory,
    trusted_path,
)
from batchd.items.paths import INPUT_DIRECTORIES_VARIABLE
from batchd.model import ExecutionContext


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory ``tmp/work``, with ``tmp/secret.csv`` outside it, and no input
    directories declared (restored after the test)."""
    (tmp_path / "work").mkdir()
    (tmp_path / "secret.csv").write_text("secret\nhunter2\n")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv(INPUT_DIRECTORIES_VARIABLE, "")
    return tmp_path / "work"


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def ctx(**params: Any) -> ExecutionContext:
    return ExecutionContext(params=params)


def read_all(reader: CsvItemReader, context: ExecutionContext) -> list[Any]:
    reader.open(context)
    try:
        return list(iter(reader.read, None))
    finally:
        reader.close()


def test_a_parameter_cannot_make_a_job_write_outside_its_directory(
    work: Path, tmp_path: Path
) -> None:
    """The issue's case, end to end: the execution fails naming the parameter, and no file
    and no directory appears anywhere."""
    registry = JobRegistry()
    registry.register(
        JobBuilder("report")
        .step(
            StepBuilder("write")
            .reader(ListItemReader([{"n": 1}, {"n": 2}]))
            .writer(CsvItemWriter("out/r_{region}.csv"))
            .build()
        )
        .build()
    )
    repository = SqlJobRepository(f"sqlite:///{tmp_path / 'batchd.db'}")
    operator = JobOperator(repository, registry, heartbeat=0.2)
    before = files_under(tmp_path)
    try:
        escaped = operator.start("report", {"region": "x/../../../escaped"})
        assert escaped.status == BatchStatus.FAILED
        assert escaped.exit_message is not None
        assert escaped.exit_message.startswith(
            "step 'write' FAILED: InvalidJobParameters: parameter 'region' "
            "(region = 'x/../../../escaped') takes "
            "the path template 'out/r_{region}.csv' out of out/"
        )
        nul = operator.start("report", {"region": "eu\0.csv"})
        assert nul.status == BatchStatus.FAILED
        assert "parameter 'region' puts a NUL character" in (nul.exit_message or "")
        assert files_under(tmp_path) - before <= {"batchd.db-wal", "batchd.db-shm"}
        # A value that stays in out/ (even through a "..") is written as before.
        fine = operator.start("report", {"region": "eu/../west"})
        assert fine.status == BatchStatus.COMPLETED
        assert (work / "out" / "west.csv").read_text() == "n\n1\n2\n"
    finally:
        operator.shutdown()
        repository.dispose()


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("../secret.csv", "'file'"),
        ("data/../../secret.csv", "'file'"),
        ("/etc/passwd", "'file'"),
    ],
)
def test_a_reader_is_kept_in_the_working_directory(work: Path, value: str, named: str) -> None:
    with pytest.raises(InvalidJobParameters, match=f"parameter {named} .* out of the working"):
        read_all(CsvItemReader("{file}"), ctx(file=value))


def test_a_reader_reads_what_stays_inside(work: Path) -> None:
    (work / "data").mkdir()
    (work / "data" / "in.csv").write_text("a\n1\n")
    assert read_all(CsvItemReader("{file}"), ctx(file="data/in.csv")) == [{"a": "1"}]
    assert read_all(CsvItemReader("{file}"), ctx(file=str(work / "data" / "in.csv"))) == [
        {"a": "1"}
    ]


def test_the_fixed_directory_is_the_template_before_its_first_parameter(work: Path) -> None:
    (work / "in" / "eu").mkdir(parents=True)
    (work / "in" / "eu" / "d_20261121.csv").write_text("a\n1\n")

    class Params(BaseModel):
        region: str
        date: dt.date

    template = "in/{region}/d_{date:%Y%m%d}.csv"
    typed = ExecutionContext(params=Params(region="eu", date=dt.date(2026, 11, 21)))
    assert read_all(CsvItemReader(template), typed) == [{"a": "1"}]
    climbing = ExecutionContext(params=Params(region="../..", date=dt.date(2026, 11, 21)))
    with pytest.raises(InvalidJobParameters, match=r"'region' \(region = '../..'\) .* out of in/"):
        read_all(CsvItemReader(template), climbing)
    # Only the parameter that climbs is named, not the date beside it.
    with pytest.raises(InvalidJobParameters) as refused:
        read_all(CsvItemReader(template), climbing)
    assert "'date'" not in str(refused.value)


def test_trusted_parameters_may_point_anywhere_and_the_others_stay_under_them(
    work: Path, tmp_path: Path
) -> None:
    assert read_all(
        CsvItemReader(trusted_path("{file}", "file")), ctx(file=str(tmp_path / "secret.csv"))
    ) == [{"secret": "hunter2"}]
    elsewhere = tmp_path / "elsewhere"
    writer = CsvItemWriter(trusted_path("{out_dir}/r_{region}.csv", "out_dir"))
    context = ctx(out_dir=str(elsewhere), region="eu")
    writer.open(context)
    writer.write([{"n": 1}])
    writer.complete(context)
    assert (elsewhere / "r_eu.csv").read_text() == "n\n1\n"
    with pytest.raises(InvalidJobParameters, match=f"'region' .* out of {elsewhere}/"):
        writer.open(ctx(out_dir=str(elsewhere), region="x/../../y"))
    assert not (tmp_path / "y.csv").exists()
    with pytest.raises(ValueError, match="needs the names"):
        trusted_path("{file}")


@pytest.fixture
def spool(tmp_path: Path, work: Path) -> Iterator[Path]:
    directory = tmp_path / "spool"
    (directory / "processed").mkdir(parents=True)
    (directory / "processed" / "drop.csv").write_text("a\n7\n")
    allow_input_directory(directory)
    yield directory


def test_readers_may_follow_a_parameter_into_an_input_directory(
    spool: Path, tmp_path: Path
) -> None:
    dropped = str(spool / "processed" / "drop.csv")
    assert read_all(CsvItemReader("{file}"), ctx(file=dropped)) == [{"a": "7"}]
    assert FileLinePartitioner("{file}").partition(1, {"file": dropped})[0]["end_offset"] == 4
    allow_input_directory(spool)  # declared once, whatever how often
    assert os.environ[INPUT_DIRECTORIES_VARIABLE] == str(spool.resolve())
    # Out of it again, it is refused ...
    with pytest.raises(InvalidJobParameters, match="'file'"):
        read_all(CsvItemReader("{file}"), ctx(file=f"{spool}/../secret.csv"))
    # ... also through a symbolic link a dropper could leave there,
    (spool / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidJobParameters, match="'file'"):
        read_all(CsvItemReader("{file}"), ctx(file=f"{spool}/link/secret.csv"))
    # ... and writers never write there on a parameter's word.
    with pytest.raises(InvalidJobParameters, match="'file'"):
        CsvItemWriter("{file}").open(ctx(file=f"{spool}/processed/new.csv"))
    assert not (spool / "processed" / ".new.csv.partial").exists()


def test_partitioners_are_kept_in_the_working_directory(work: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidJobParameters, match="'date'"):
        FileGlobPartitioner("in/{date}/*.csv").partition(1, {"date": "../../.."})
    with pytest.raises(InvalidJobParameters, match="'file'"):
        FileLinePartitioner("{file}").partition(2, {"file": "/etc/passwd"})
    # A partition's context comes from the job's own partitioner: it may point anywhere.
    part = ExecutionContext(partition={"path": str(tmp_path / "secret.csv")})
    assert read_all(CsvItemReader("{partition[path]}"), part) == [{"secret": "hunter2"}]
