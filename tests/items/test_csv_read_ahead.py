"""CsvItemReader reads records ahead in batches when it has no byte range to stop at: what
it hands out, the errors it raises and the position it saves after each record are those of
the line-by-line reader (a byte range covering the whole file), across batch boundaries."""

from __future__ import annotations

import copy
import dataclasses
import gc
from pathlib import Path
from typing import Any

import pytest

from batchd.errors import ItemParseError
from batchd.items import CsvItemReader
from tests.items.helpers import make_ctx, persisted


@dataclasses.dataclass
class Row:
    id: int
    text: str


def odd_file(path: Path) -> Path:
    """1,300 records, with what breaks a batch here and there: quoted fields over several
    lines, blank lines, a wrong number of fields, undecodable bytes, a value that is not
    an int (for the model), some of them next to each other and at the ends."""
    lines = [b"id,text\n", b"\n"]
    for i in range(1300):
        if i % 97 == 3:
            lines.append(f'{i},"two\nlines, {i}"\n'.encode())
        elif i % 211 == 5:
            lines.append(f"{i},too,many\n".encode())
        elif i % 307 in (7, 8):
            lines.append(b"\xff\xfe," + str(i).encode() + b"\n")
        elif i % 401 == 9:
            lines.append(f"x{i},not an int\n".encode())
        elif i in (510, 511, 512, 1023):
            lines.append(b"\n\n")
        lines.append(f"{i},r{i}\n".encode())
    lines.append(b"\n")
    path.write_bytes(b"".join(lines))
    return path


def outcomes(reader: CsvItemReader, ctx: Any) -> list[tuple[Any, ...]]:
    """Each read()'s item or error, with the position saved just after it."""
    reader.open(ctx)
    seen: list[tuple[Any, ...]] = []
    try:
        while True:
            try:
                item: Any = reader.read()
            except ItemParseError as error:
                item = ("error", error.line, error.field, str(error))
            reader.update(ctx)
            seen.append((item, ctx["CsvItemReader.offset"], ctx["CsvItemReader.line"]))
            if item is None:
                return seen
    finally:
        reader.close()


@pytest.mark.parametrize("model", [None, Row])
def test_read_ahead_hands_out_and_saves_what_line_by_line_reading_does(
    tmp_path: Path, model: Any
) -> None:
    path = odd_file(tmp_path / "odd.csv")
    whole = {"start_offset": 0, "end_offset": path.stat().st_size}
    line_by_line = outcomes(copy.copy(CsvItemReader(path, model=model)), make_ctx(partition=whole))
    ahead = outcomes(copy.copy(CsvItemReader(path, model=model)), make_ctx())
    assert ahead == line_by_line
    errors = [entry for entry in ahead if isinstance(entry[0], tuple)]
    assert len(errors) == (21 if model is Row else 17)


@pytest.mark.parametrize("model", [None, Row])
def test_restart_from_any_record_reads_the_rest(tmp_path: Path, model: Any) -> None:
    path = odd_file(tmp_path / "odd.csv")
    full = outcomes(copy.copy(CsvItemReader(path, model=model)), make_ctx())
    for done in (0, 1, 127, 128, 129, 400, 511, 512, 513, 700, 1024, len(full) - 2):
        ctx = make_ctx()
        reader = copy.copy(CsvItemReader(path, model=model))
        reader.open(ctx)
        for _ in range(done):
            try:
                reader.read()
            except ItemParseError:
                pass
        reader.update(ctx)
        reader.read()  # read but not committed: read again after the restart
        reader.close()
        restarted = copy.copy(CsvItemReader(path, model=model))
        assert outcomes(restarted, persisted(ctx)) == full[done:], done


@dataclasses.dataclass
class Payment:
    id: int
    name: str
    amount: float


def test_reading_models_sets_off_few_young_collections(tmp_path: Path) -> None:
    """Reading dataclass items a chunk at a time, as a step does, sets off fewer young
    collections of the cyclic garbage collector than one per 700 records (its threshold):
    the rows read ahead do not add to what the items the step holds set off."""
    path = tmp_path / "payments.csv"
    records = 20_000
    path.write_text(
        "id,name,amount\n" + "".join(f"{i},customer {i},{i}.25\n" for i in range(records))
    )
    reader = CsvItemReader(path, model=Payment)
    reader.open(make_ctx())
    young = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 0:
            young.append(1)

    threshold = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    gc.collect()
    gc.callbacks.append(count)
    try:
        read = 0
        while chunk := reader.read_many(1000):  # each chunk held until the next one
            read += len(chunk)
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*threshold)
        reader.close()
    assert read == records
    assert len(young) < records / 700


def line_outcomes(reader: Any, ctx: Any) -> list[tuple[Any, ...]]:
    """Each read()'s item or error, with the position saved just after it."""
    reader = copy.copy(reader)
    reader.open(ctx)
    seen: list[tuple[Any, ...]] = []
    while True:
        try:
            item: Any = reader.read()
        except ItemParseError as error:
            item = ("error", error.line, str(error))
        reader.update(ctx)
        seen.append((item, ctx[reader.key("offset")], ctx[reader.key("line")]))
        if item is None:
            reader.close()
            return seen


ODD_LINES = {
    "jsonl": (
        b'\xef\xbb\xbf{"id": 0}\n'
        b'{"id": 1, "text": "\xc3\xa9t\xc3\xa9"}\n\n  \r\n'
        b'{"id": 2\n[1, 2]\n\xff{"id": 3}\n'
        b'\t{"id": 4} \r\n'
        b'\xc2\xa0{"id": 5}\n'
        b'"text"\n{"id": 6}'
    ),
    "fixed": (
        b"\xef\xbb\xbf   0abc\n   1\xc3\xa9t\xc3\xa9\n\n  \r\n   x  ab\n\xff  3abc\n"
        b"   4abcdefgh\n   5ab\r\n   6"
    ),
}


@pytest.mark.parametrize("kind", sorted(ODD_LINES))
def test_line_readers_quick_path_reads_as_line_by_line(tmp_path: Path, kind: str) -> None:
    """JsonLinesItemReader's and FixedWidthItemReader's quick path (no byte range) hands
    out, raises and saves what their line-by-line path does: blank lines, bad values,
    bytes that are not UTF-8, a byte-order mark on the first line, CR LF endings."""
    from batchd.items import FixedWidthItemReader, JsonLinesItemReader

    path = tmp_path / f"odd.{kind}"
    path.write_bytes(ODD_LINES[kind])
    reader: Any = (
        JsonLinesItemReader(path)
        if kind == "jsonl"
        else FixedWidthItemReader(path, [("id", 4, int), ("text", 4)])
    )
    whole = {"start_offset": 0, "end_offset": path.stat().st_size}
    quick = line_outcomes(reader, make_ctx())
    assert quick == line_outcomes(reader, make_ctx(partition=whole))
    ids = [entry[0]["id"] for entry in quick if isinstance(entry[0], dict)]
    assert ids == ([0, 1, 4, 5, 6] if kind == "jsonl" else [0, 1, 5, 6])
