"""The built-in partitioners: key ranges of a SQL table (on SQLite and PostgreSQL), line-aligned
byte ranges of a file, one partition per file of a glob; each checked by reading every
partition with the reader it is meant for."""

from __future__ import annotations

import itertools
import json
import os
import pickle
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import MetaData, String, create_engine, text
from sqlalchemy.engine import Engine

from batchd.errors import InputFileNotFound
from batchd.items import (
    CsvItemReader,
    FileGlobPartitioner,
    FileLinePartitioner,
    JsonLinesItemReader,
    SqlItemReader,
    SqlKeyRangePartitioner,
)
from tests.items.helpers import filled, make_ctx, read_all
from tests.support.jobs import keyed_table

metadata = MetaData()
orders = keyed_table("orders", metadata, status=String(10), code=String(10))
empty = keyed_table("empty", metadata)

# Keys with gaps: min 7, max 250.
KEYS = [7, 8, 9, 12, 13, 20, 21, 22, 23, 40, 41, 99, 100, 101, 102, 103, 180, 249, 250]
NEW = {12, 13, 20, 99, 100}  # min 12, max 100


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    rows = [{"id": k, "status": "new" if k in NEW else "done", "code": f"c{k}"} for k in KEYS]
    with filled(database_url, orders, rows) as engine:
        yield engine


def assert_exact_cover(parts: list[dict[str, Any]], low: int, high: int, n: int) -> None:
    """Indexes 0.., contiguous inclusive ranges from low to high, widths within one key."""
    assert 1 <= len(parts) <= n
    assert [p["index"] for p in parts] == list(range(len(parts)))
    assert parts[0]["start"] == low and parts[-1]["end"] == high
    for before, after in itertools.pairwise(parts):
        assert after["start"] == before["end"] + 1
    widths = [p["end"] - p["start"] + 1 for p in parts]
    assert min(widths) >= 1 and max(widths) - min(widths) <= 1
    json.dumps(parts)  # partition contexts are stored as JSON


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16])
def test_key_ranges_cover_min_to_max(database_url: str, engine: Engine, n: int) -> None:
    parts = SqlKeyRangePartitioner(database_url, "orders", "id").partition(n, {})
    assert len(parts) == n
    assert_exact_cover(parts, 7, 250, n)


@pytest.mark.parametrize("n", [1, 2, 5, 19, 500])
def test_readers_of_the_partitions_read_every_row_once(
    database_url: str, engine: Engine, n: int
) -> None:
    parts = SqlKeyRangePartitioner(engine, "orders", "id").partition(n, {})
    reader = SqlItemReader(database_url, orders, key="id", page_size=3)
    ids = [row["id"] for p in parts for row in read_all(reader, make_ctx(partition=p))]
    assert ids == KEYS


def test_fewer_keys_than_partitions(database_url: str, engine: Engine) -> None:
    partitioner = SqlKeyRangePartitioner(database_url, "orders", "id", where="id < 10")
    assert partitioner.partition(10, {}) == [
        {"index": 0, "start": 7, "end": 7},
        {"index": 1, "start": 8, "end": 8},
        {"index": 2, "start": 9, "end": 9},
    ]


def test_where_narrows_the_bounds(database_url: str, engine: Engine) -> None:
    parts = SqlKeyRangePartitioner(engine, "orders", "id", where="status = 'new'").partition(4, {})
    assert_exact_cover(parts, 12, 100, 4)
    query = orders.select().where(orders.c.status == "new")  # the reader filters its rows
    reader = SqlItemReader(engine, query, key="id")
    ids = [row["id"] for p in parts for row in read_all(reader, make_ctx(partition=p))]
    assert ids == sorted(NEW)


@pytest.mark.parametrize("where", [None, "status = 'nothing'"])
def test_no_rows_gives_one_empty_partition(
    database_url: str, engine: Engine, where: str | None
) -> None:
    table = "empty" if where is None else "orders"
    parts = SqlKeyRangePartitioner(database_url, table, "id", where=where).partition(4, {})
    assert parts == [{"index": 0, "start": 1, "end": 0}]
    assert (
        read_all(SqlItemReader(database_url, orders, key="id"), make_ctx(partition=parts[0])) == []
    )


def test_repr_hides_the_password() -> None:
    partitioner = SqlKeyRangePartitioner("postgresql://u:secret@h/db", "t", "id", where="x > 1")
    assert repr(partitioner) == (
        "SqlKeyRangePartitioner('postgresql://u:***@h/db', 't', 'id', where='x > 1')"
    )
    assert repr(FileLinePartitioner(Path("in.csv"))) == "FileLinePartitioner('in.csv')"


def test_pickles_without_its_engine(database_url: str, engine: Engine) -> None:
    partitioner = SqlKeyRangePartitioner(engine, "orders", "id", where="id > 20")
    partitioner.partition(2, {})  # used once: a pickle must not carry what that opened
    clone = pickle.loads(pickle.dumps(partitioner))  # what a worker process receives
    assert clone.url == engine.url.render_as_string(hide_password=False)
    assert clone.partition(2, {}) == partitioner.partition(2, {})
    assert clone.partition(2, {})[0]["start"] == 21


def test_text_column_is_an_error(database_url: str, engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"column 'code' of table 'orders' must hold integer"):
        SqlKeyRangePartitioner(database_url, "orders", "code").partition(2, {})


def test_text_values_in_an_untyped_sqlite_column_are_an_error(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:  # SQLite keeps any value in a column without a type
        conn.execute(text("CREATE TABLE loose (k)"))
        conn.execute(text("INSERT INTO loose VALUES (1), ('x')"))
    engine.dispose()
    with pytest.raises(ValueError, match=r"column 'k' of table 'loose' .* it holds 'x'"):
        SqlKeyRangePartitioner(sqlite_url, "loose", "k").partition(2, {})


def test_unknown_table_and_column(database_url: str, engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"no table 'nope'"):
        SqlKeyRangePartitioner(database_url, "nope", "id").partition(2, {})
    with pytest.raises(ValueError, match=r"table 'orders' has no column 'idd' \(columns: id,"):
        SqlKeyRangePartitioner(database_url, "orders", "idd").partition(2, {})


def test_sql_partition_count_must_be_positive(database_url: str, engine: Engine) -> None:
    with pytest.raises(ValueError, match="number of partitions must be at least 1, not 0"):
        SqlKeyRangePartitioner(database_url, "orders", "id").partition(0, {})


# ------------------------------------------------------------------------------- file lines
def csv_text(rows: int, end: str = "\n") -> str:
    lines = ["id,name,amount"] + [f"{i},name-{i},{i * 7 % 100}" for i in range(rows)]
    return end.join(lines) + end


def jsonl_text(rows: int, end: str = "\n") -> str:
    return "".join(json.dumps({"id": i, "pad": "x" * (i % 13)}) + end for i in range(rows))


READERS: dict[str, Callable[[Path], Any]] = {
    "csv": lambda p: CsvItemReader(p),
    "jsonl": lambda p: JsonLinesItemReader(p),
}
TEXTS: dict[str, Callable[[int, str], str]] = {"csv": csv_text, "jsonl": jsonl_text}


def read_partitions(reader: Any, parts: list[dict[str, Any]]) -> list[Any]:
    """What the partitions' reader copies read, in partition order."""
    return [item for p in parts for item in read_all(reader, make_ctx(partition=p))]


def assert_line_aligned(data: bytes, parts: list[dict[str, Any]], n: int) -> None:
    assert 1 <= len(parts) <= n
    assert [p["index"] for p in parts] == list(range(len(parts)))
    assert parts[0]["start_offset"] == 0 and parts[-1]["end_offset"] == len(data)
    for before, after in itertools.pairwise(parts):
        assert after["start_offset"] == before["end_offset"]
    for p in parts:
        assert p["start_offset"] < p["end_offset"] or len(data) == 0  # no empty range
        assert p["start_offset"] == 0 or data[p["start_offset"] - 1 : p["start_offset"]] == b"\n"


@pytest.mark.parametrize("kind", sorted(READERS))
@pytest.mark.parametrize("end", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("trailing", [True, False], ids=["trailing-newline", "no-trailing"])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 40, 41, 42, 10_000])
def test_line_partitions_read_every_record_once(
    tmp_path: Path, kind: str, end: str, trailing: bool, n: int
) -> None:
    path = tmp_path / f"input.{kind}"
    content = TEXTS[kind](40, end)  # the CSV has 41 lines with its header
    if not trailing:
        content = content[: -len(end)]
    path.write_bytes(content.encode())
    reader = READERS[kind](path)
    parts = FileLinePartitioner(path).partition(n, {})
    assert_line_aligned(path.read_bytes(), parts, n)
    lines = 40 if kind == "jsonl" else 41
    assert len(parts) <= min(n, lines)
    if n <= 7:  # ranges much longer than a line: none is left empty
        assert len(parts) == n
    if n >= len(content):  # a split point at every byte: one partition per line
        assert len(parts) == lines
    items = read_partitions(reader, parts)
    assert items == read_all(reader)
    assert [int(i["id"]) for i in items] == list(range(40))


def test_split_points_inside_long_lines_move_to_the_next_line(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    lines = [json.dumps({"id": 0, "pad": "x" * 1000}), '{"id": 1}', '{"id": 2}']
    path.write_text("\n".join(lines) + "\n")
    parts = FileLinePartitioner(path).partition(8, {})
    # All 7 split points fall inside line 1: they move to the start of line 2, and the
    # ranges left empty are dropped.
    first = len(lines[0]) + 1
    size = path.stat().st_size
    assert parts == [
        {"index": 0, "start_offset": 0, "end_offset": first},
        {"index": 1, "start_offset": first, "end_offset": size},
    ]
    assert_line_aligned(path.read_bytes(), parts, 8)
    assert [i["id"] for i in read_partitions(JsonLinesItemReader(path), parts)] == [0, 1, 2]


@pytest.mark.parametrize("kind", sorted(READERS))
def test_empty_file_is_one_empty_partition(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"empty.{kind}"
    path.write_bytes(b"")
    parts = FileLinePartitioner(path).partition(4, {})
    assert parts == [{"index": 0, "start_offset": 0, "end_offset": 0}]
    assert read_partitions(READERS[kind](path), parts) == []


def test_csv_header_only(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("id,name\n")
    parts = FileLinePartitioner(path).partition(3, {})
    assert parts == [{"index": 0, "start_offset": 0, "end_offset": 8}]
    assert read_partitions(CsvItemReader(path), parts) == []


class Params(BaseModel):
    day: date


def test_line_path_template_from_params(tmp_path: Path) -> None:
    path = tmp_path / "in_20261121.csv"
    path.write_text(csv_text(5))
    partitioner = FileLinePartitioner(str(tmp_path / "in_{day:%Y%m%d}.csv"))
    parts = partitioner.partition(2, Params(day=date(2026, 11, 21)))
    assert parts == FileLinePartitioner(path).partition(2, {})
    assert partitioner.partition(2, {"day": date(2026, 11, 21)}) == parts


def test_missing_file_is_input_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "missing.csv"
    with pytest.raises(InputFileNotFound) as caught:
        FileLinePartitioner(path).partition(2, {})
    with pytest.raises(InputFileNotFound) as from_reader:
        read_all(CsvItemReader(path))
    assert str(caught.value) == str(from_reader.value)
    assert caught.value.filename == str(path)


def test_line_partitioner_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(csv_text(3))
    with pytest.raises(ValueError, match="number of partitions must be at least 1, not 0"):
        FileLinePartitioner(path).partition(0, {})
    with pytest.raises(ValueError, match=r"encoding 'utf-16' does not write a line break"):
        FileLinePartitioner(path, encoding="utf-16")
    with pytest.raises(LookupError, match="nope"):
        FileLinePartitioner(path, encoding="nope")
    FileLinePartitioner(path, encoding="utf-8-sig")  # a byte-order mark is fine
    clone = pickle.loads(pickle.dumps(FileLinePartitioner(path, encoding="latin-1")))
    assert clone.partition(2, {}) == FileLinePartitioner(path).partition(2, {})


# ------------------------------------------------------------------------------- file glob
@pytest.fixture
def inbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "in" / "20261121"
    directory.mkdir(parents=True)
    for name in ("b.csv", "a.csv", "c.csv"):
        (directory / name).write_text(f"id,file\n1,{name}\n2,{name}\n")
    (directory / "a.csv.sha256").write_text("0" * 64 + "  a.csv\n")  # a sidecar
    (directory / "notes.txt").write_text("not csv")
    (directory / "dir.csv").mkdir()  # not a regular file
    (directory / ".c.csv.partial").write_text("a writer's unfinished output")
    return directory


def test_one_partition_per_file_in_order(inbox: Path) -> None:
    parts = FileGlobPartitioner("in/*/*.csv").partition(1, {})
    assert parts == [
        {"index": 0, "path": str(inbox / "a.csv")},
        {"index": 1, "path": str(inbox / "b.csv")},
        {"index": 2, "path": str(inbox / "c.csv")},
    ]
    assert all(os.path.isabs(p["path"]) for p in parts)


def test_glob_leaves_out_sidecars_and_directories(inbox: Path) -> None:
    names = [os.path.basename(p["path"]) for p in FileGlobPartitioner("in/**").partition(5, {})]
    assert names == ["a.csv", "b.csv", "c.csv", "notes.txt"]


def test_glob_template_and_reading_the_files(inbox: Path) -> None:
    (inbox / "a.csv.sha256").unlink()  # (a wrong digest: the reader would refuse the file)
    parts = FileGlobPartitioner("in/{day:%Y%m%d}/*.csv").partition(
        1, Params(day=date(2026, 11, 21))
    )
    assert len(parts) == 3
    reader = CsvItemReader("{partition[path]}")
    files = [row["file"] for row in read_partitions(reader, parts)]
    assert files == ["a.csv", "a.csv", "b.csv", "b.csv", "c.csv", "c.csv"]


def test_glob_without_match_is_no_partition(inbox: Path) -> None:
    partitioner = FileGlobPartitioner("in/*/*.json")
    assert partitioner.partition(4, {}) == []
    assert repr(partitioner) == "FileGlobPartitioner('in/*/*.json')"  # as errors name it
    assert FileGlobPartitioner("nowhere/{day}/*.csv").partition(4, {"day": "x"}) == []
