"""Restartable, atomic output, the same for every file writer family."""

from __future__ import annotations

import copy
import errno
import hashlib
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from batchd.errors import BatchError, OutputCheckpointError, OutputFileError
from batchd.items import (
    Column,
    CsvItemReader,
    CsvItemWriter,
    FixedWidthItemReader,
    FixedWidthItemWriter,
    JsonLinesItemReader,
    JsonLinesItemWriter,
)
from tests.items.helpers import make_ctx, persisted, read_all, run_writer

COLUMNS = [Column("id", 5, int), Column("name", 12), Column("amount", 10, Decimal)]

WRITERS: dict[str, Callable[[Path], Any]] = {
    "csv": lambda p: CsvItemWriter(p, fields=["id", "name", "amount"]),
    "csv-derived-fields": lambda p: CsvItemWriter(p),
    "jsonl": lambda p: JsonLinesItemWriter(p),
    "fixed": lambda p: FixedWidthItemWriter(p, COLUMNS),
}
READERS: dict[str, Callable[[Path], Any]] = {
    "csv": lambda p: CsvItemReader(p),
    "csv-derived-fields": lambda p: CsvItemReader(p),
    "jsonl": lambda p: JsonLinesItemReader(p),
    "fixed": lambda p: FixedWidthItemReader(p, COLUMNS),
}


def rows(start: int, stop: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"name-{i}", "amount": Decimal(i) / 4} for i in range(start, stop)]


CHUNKS = [rows(0, 3), rows(3, 6), rows(6, 9), rows(9, 10)]


def uninterrupted(kind: str, directory: Path, chunks: list[list[dict[str, Any]]] = CHUNKS) -> bytes:
    directory.mkdir()
    path = directory / "out.dat"
    run_writer(WRITERS[kind](path), chunks)
    return path.read_bytes()


def died_after(template: Any, committed: int, written: int) -> dict[str, Any]:
    """A first run of a copy of ``template`` that commits the first ``committed`` chunks,
    writes up to chunk ``written`` and dies before its next commit (no update, no close);
    what it had written reaches the file. Returns the checkpoint of its last commit."""
    first = copy.copy(template)
    ctx = make_ctx()
    first.open(ctx)
    for chunk in CHUNKS[:committed]:
        first.write(chunk)
        first.update(ctx)
    checkpoint = persisted(ctx)
    for chunk in CHUNKS[committed:written]:
        first.write(chunk)
    first._output._file.flush()
    return checkpoint


@pytest.fixture(params=sorted(WRITERS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_round_trip(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "out.dat"
    run_writer(WRITERS[kind](path), CHUNKS)
    items = read_all(READERS[kind](path))
    assert len(items) == 10
    assert [str(i["id"]) for i in items] == [str(i) for i in range(10)]
    assert [i["name"] for i in items] == [f"name-{i}" for i in range(10)]
    assert [Decimal(str(i["amount"])) for i in items] == [Decimal(i) / 4 for i in range(10)]
    assert os.listdir(tmp_path) == ["out.dat"]  # no partial file left behind


def test_nothing_appears_before_complete(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "out.dat"
    writer = copy.copy(WRITERS[kind](path))
    ctx = make_ctx()
    writer.open(ctx)
    writer.write(CHUNKS[0])
    writer.update(ctx)
    assert not path.exists()
    assert (tmp_path / ".out.dat.partial").stat().st_size == ctx[f"{writer.name}.size"]
    writer.complete(ctx)
    writer.close()
    assert path.exists() and not (tmp_path / ".out.dat.partial").exists()


def test_restart_after_crash_is_byte_identical(kind: str, tmp_path: Path) -> None:
    expected = uninterrupted(kind, tmp_path / "reference")
    path = tmp_path / "out.dat"
    template = WRITERS[kind](path)
    # First run: two chunks commit, the third is written but the process dies.
    checkpoint = died_after(template, committed=2, written=3)
    # Restart: a fresh copy resumes from the checkpoint and writes the rest.
    run_writer(template, CHUNKS[2:], checkpoint)
    assert path.read_bytes() == expected
    assert not (tmp_path / ".out.dat.partial").exists()


def test_restart_cuts_off_a_dead_runs_tail_longer_than_what_it_writes(
    kind: str, tmp_path: Path
) -> None:
    """The restart writes less where the dead run had written more (its processor now
    filters the items that made it fail): the stale bytes past the checkpoint must go, not
    be overwritten in part."""
    shorter = [rows(6, 7)]
    expected = uninterrupted(kind, tmp_path / "reference", [*CHUNKS[:2], *shorter])
    path = tmp_path / "out.dat"
    template = WRITERS[kind](path)
    # Two chunks commit, the other two are written, never committed: the process died.
    checkpoint = died_after(template, committed=2, written=len(CHUNKS))

    run_writer(template, shorter, checkpoint)
    assert path.read_bytes() == expected


def test_restart_after_crash_between_publish_and_step_end(kind: str, tmp_path: Path) -> None:
    expected = uninterrupted(kind, tmp_path / "reference")
    path = tmp_path / "out.dat"
    template = WRITERS[kind](path)
    ctx = run_writer(template, CHUNKS)  # published, but say the step was never recorded done
    assert path.read_bytes() == expected

    again = copy.copy(template)
    again.open(persisted(ctx))  # takes the published file back
    assert not path.exists()
    again.complete(ctx)  # the reader had nothing left: the engine completes at once
    again.close()
    assert path.read_bytes() == expected


def test_restart_with_nothing_committed_starts_over(kind: str, tmp_path: Path) -> None:
    expected = uninterrupted(kind, tmp_path / "reference")
    path = tmp_path / "out.dat"
    template = WRITERS[kind](path)
    first = copy.copy(template)
    first.open(make_ctx())
    first.write(CHUNKS[0])  # crash before the first commit
    run_writer(template, CHUNKS, make_ctx())
    assert path.read_bytes() == expected


def test_output_shorter_than_checkpoint_is_refused(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "out.dat"
    template = WRITERS[kind](path)
    first = copy.copy(template)
    ctx = make_ctx()
    first.open(ctx)
    first.write(CHUNKS[0])
    first.update(ctx)
    first.close()
    partial = tmp_path / ".out.dat.partial"
    partial.write_bytes(partial.read_bytes()[:-3])  # cut by someone else
    with pytest.raises(OutputCheckpointError, match="shorter than its checkpoint"):
        copy.copy(template).open(persisted(ctx))
    partial.unlink()
    with pytest.raises(OutputCheckpointError, match="neither it nor its partial file"):
        copy.copy(template).open(persisted(ctx))


def test_checksum_sidecar(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "out.dat"
    writer = WRITERS[kind](path)
    writer.checksum = True
    run_writer(writer, CHUNKS)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (tmp_path / "out.dat.sha256").read_text() == f"{digest}  out.dat\n"
    # sha256sum agrees, and our own readers verify it
    result = subprocess.run(
        ["sha256sum", "-c", "out.dat.sha256"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(read_all(READERS[kind](path))) == 10


def test_writers_pickle_before_and_after_open(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "out.dat"
    writer = WRITERS[kind](path)
    clone = pickle.loads(pickle.dumps(writer))
    ctx = make_ctx()
    opened = copy.copy(writer)
    opened.open(ctx)
    opened.write(CHUNKS[0])
    opened.update(ctx)
    pickle.dumps(opened)  # no open file travels along
    opened.close()
    run_writer(clone, CHUNKS, make_ctx())
    assert len(read_all(READERS[kind](path))) == 10


def test_template_path_with_typed_date(tmp_path: Path) -> None:
    from pydantic import BaseModel

    class Params(BaseModel):
        date: date
        region: str = "eu"

    params = Params.model_validate({"date": "2026-11-21"})
    writer = CsvItemWriter(str(tmp_path / "out" / "report_{region}_{date:%Y%m%d}.csv"))
    run_writer(writer, [rows(0, 2)], make_ctx(params=params))
    target = tmp_path / "out" / "report_eu_20261121.csv"
    assert target.read_text().splitlines()[0] == "id,name,amount"
    # the same template read back, with dict parameters holding a date
    reader = CsvItemReader(str(tmp_path / "out" / "report_{region}_{date:%Y%m%d}.csv"))
    items = read_all(reader, make_ctx(params={"date": date(2026, 11, 21), "region": "eu"}))
    assert [i["id"] for i in items] == ["0", "1"]


def test_template_errors_are_clear(tmp_path: Path) -> None:
    from batchd.errors import PathTemplateError

    writer = CsvItemWriter(str(tmp_path / "report_{date:%Y%m%d}.csv"))
    with pytest.raises(PathTemplateError, match="needs the job parameter 'date'"):
        copy.copy(writer).open(make_ctx(params={}))
    with pytest.raises(PathTemplateError, match="params_model"):
        copy.copy(writer).open(make_ctx(params={"date": "2026-11-21"}))


def test_partition_in_template(tmp_path: Path) -> None:
    writer = JsonLinesItemWriter(str(tmp_path / "part-{partition[index]}.jsonl"))
    run_writer(writer, [rows(0, 1)], make_ctx(partition={"index": 3}))
    assert (tmp_path / "part-3.jsonl").exists()


def test_disk_full_names_the_file(tmp_path: Path) -> None:
    # The partial file is /dev/full: every write fails with ENOSPC, as on a full disk.
    path = tmp_path / "out.csv"
    os.symlink("/dev/full", tmp_path / ".out.csv.partial")
    writer = copy.copy(CsvItemWriter(path))
    writer.open(make_ctx())  # no fields given: nothing is written before the first item
    with pytest.raises(OutputFileError) as caught:
        writer.write(rows(0, 2))
    assert caught.value.errno == errno.ENOSPC
    assert isinstance(caught.value, OSError) and isinstance(caught.value, BatchError)
    assert str(path) in str(caught.value) and "No space left" in str(caught.value)
    writer.close()


def test_failed_write_keeps_committed_part(tmp_path: Path) -> None:
    """A write that hits the file size limit (EFBIG, like a full disk) leaves the committed
    bytes as they were, and a restart then finishes the file byte for byte."""
    expected = uninterrupted("csv", tmp_path / "reference")
    path = tmp_path / "out.dat"
    script = textwrap.dedent(
        f"""
        import json, resource, signal, sys
        from decimal import Decimal
        from batchd.items import CsvItemWriter
        from batchd.model import ExecutionContext
        from batchd.errors import OutputFileError
        chunks = {[[{**r, "amount": str(r["amount"])} for r in c] for c in CHUNKS]!r}
        w = CsvItemWriter({str(path)!r}, fields=["id", "name", "amount"])
        ctx = ExecutionContext()
        w.open(ctx)
        w.write(chunks[0]); w.update(ctx)
        committed = ctx["CsvItemWriter.size"]
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (committed + 10, resource.RLIM_INFINITY))
        try:
            w.write(chunks[1])
        except OutputFileError as e:
            print(json.dumps({{"ctx": dict(ctx), "errno": e.errno, "message": str(e)}}))
        else:
            sys.exit("the write should have failed")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=os.getcwd()
    )
    assert result.returncode == 0, result.stderr
    import json

    outcome = json.loads(result.stdout)
    assert outcome["errno"] == errno.EFBIG
    assert str(path) in outcome["message"]
    partial = tmp_path / ".out.dat.partial"
    committed = outcome["ctx"]["CsvItemWriter.size"]
    assert partial.stat().st_size == committed  # cut back: only what was committed
    run_writer(
        CsvItemWriter(path, fields=["id", "name", "amount"]), CHUNKS[1:], make_ctx(outcome["ctx"])
    )
    assert path.read_bytes() == expected


def test_a_failed_write_call_writes_nothing(tmp_path: Path) -> None:
    from batchd.errors import ItemFormatError

    path = tmp_path / "out.txt"
    writer = copy.copy(FixedWidthItemWriter(path, [("id", 3, int), ("name", 4)]))
    ctx = make_ctx()
    writer.open(ctx)
    writer.write([{"id": 1, "name": "ab"}])
    with pytest.raises(ItemFormatError) as caught:
        writer.write([{"id": 2, "name": "cd"}, {"id": 3, "name": "too long"}])
    assert caught.value.field == "name"
    assert isinstance(caught.value, ValueError)
    writer.write([{"id": 2, "name": "cd"}])  # what a skip scan does next
    writer.update(ctx)
    writer.complete(ctx)
    writer.close()
    assert path.read_text() == "  1ab  \n  2cd  \n"
