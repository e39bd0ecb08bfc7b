"""JSON Lines, fixed-width and list readers: items, bad records, restart."""

from __future__ import annotations

import copy
import dataclasses
import json
import types
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel

from batchd.errors import ItemFormatError, ItemParseError
from batchd.items import (
    Column,
    FixedWidthItemReader,
    FixedWidthItemWriter,
    JsonLinesItemReader,
    JsonLinesItemWriter,
    ListItemReader,
)
from tests.items.helpers import make_ctx, persisted, read_all, read_n, run_writer


class Event(BaseModel):
    id: int
    at: datetime
    amount: Decimal


@dataclasses.dataclass
class Account:
    number: str
    opened: date
    balance: Decimal
    active: bool


# ------------------------------------------------------------------------------- JSON Lines
def test_jsonl_round_trip_with_types(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    items = [
        {"id": 1, "at": datetime(2026, 11, 21, 8, 30), "amount": Decimal("1.10"), "tag": "é"},
        Event(id=2, at=datetime(2026, 11, 21, 9), amount=Decimal("2.5")),
    ]
    run_writer(JsonLinesItemWriter(path), [items])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {
        "id": 1,
        "at": "2026-11-21T08:30:00",
        "amount": "1.10",
        "tag": "é",
    }
    assert "é" in lines[0]  # non-ASCII written as is
    events = read_all(JsonLinesItemReader(path, model=Event))
    assert events[1] == Event(id=2, at=datetime(2026, 11, 21, 9), amount=Decimal("2.5"))


def test_jsonl_bad_lines_name_their_line_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": 1, "at": "2026-11-21T00:00:00", "amount": 1}\n'
        '{"id": 2, "at": \n'
        "\n"
        "[1, 2]\n"
        '{"id": "x", "at": "2026-11-21T00:00:00", "amount": 1}\n'
        '{"id": 6, "at": "2026-11-21T00:00:00", "amount": 6}\n'
    )
    reader = copy.copy(JsonLinesItemReader(path, model=Event))
    reader.open(make_ctx())
    assert reader.read().id == 1
    with pytest.raises(ItemParseError, match=r"^in.jsonl line 2: invalid JSON"):
        reader.read()
    with pytest.raises(ItemParseError, match="line 4: expected a JSON object, found list"):
        reader.read()
    with pytest.raises(ItemParseError) as caught:
        reader.read()
    assert (caught.value.line, caught.value.field) == (5, "id")
    assert reader.read().id == 6
    assert reader.read() is None


def test_jsonl_reader_restart(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(10)))
    reader = copy.copy(JsonLinesItemReader(path, name="src"))
    ctx = make_ctx()
    reader.open(ctx)
    read_n(reader, 4)
    reader.update(ctx)
    read_n(reader, 2)  # never committed
    reader.close()
    assert set(ctx) == {"src.offset", "src.line", "batchd.progress"}
    # Its progress for ctl --follow: bytes read of the file's size.
    size = path.stat().st_size
    assert ctx["batchd.progress"] == {
        "unit": "bytes",
        "done": ctx["src.offset"],
        "total": size,
        "start": 0,
    }
    assert 0 < ctx["src.offset"] < size
    assert [i["n"] for i in read_all(JsonLinesItemReader(path, name="src"), persisted(ctx))] == [
        4,
        5,
        6,
        7,
        8,
        9,
    ]


def test_jsonl_writer_refuses_what_json_cannot_hold(tmp_path: Path) -> None:
    writer = copy.copy(JsonLinesItemWriter(tmp_path / "x.jsonl"))
    writer.open(make_ctx())
    with pytest.raises(ItemFormatError):
        writer.write([{"a": float("nan")}])
    with pytest.raises(ItemFormatError):
        writer.write([{"a": object()}])
    with pytest.raises(ItemFormatError):
        writer.write([42])
    writer.close()


def test_jsonl_writer_chunks_of_plain_dicts_and_of_models_write_the_same(tmp_path: Path) -> None:
    """A chunk of plain dicts is encoded as it is, any other chunk item by item: the same
    compact lines, and a chunk with an item that cannot be written writes nothing."""
    event = Event(id=2, at=datetime(2026, 11, 21, 9), amount=Decimal("2.5"))
    dicts = [{"id": i, "tag": "\u00e9", "at": date(2026, 1, i + 1)} for i in range(3)]
    expected = [
        '{"id":0,"tag":"\u00e9","at":"2026-01-01"}',
        '{"id":1,"tag":"\u00e9","at":"2026-01-02"}',
        '{"id":2,"tag":"\u00e9","at":"2026-01-03"}',
        '{"id":2,"at":"2026-11-21T09:00:00","amount":"2.5"}',
    ]
    writer = copy.copy(JsonLinesItemWriter(tmp_path / "out.jsonl"))
    ctx = make_ctx()
    writer.open(ctx)
    writer.write(dicts)
    writer.write([dicts[0], event])
    for bad in ({"text": "\ud800"}, {"n": float("inf")}, {"o": object()}, 42):
        with pytest.raises(ItemFormatError, match=r"^cannot (write|encode)"):
            writer.write([*dicts, bad])
    writer.update(ctx)
    writer.complete(ctx)
    writer.close()
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines == [*expected[:3], expected[0], expected[3]]


# ------------------------------------------------------------------------------- fixed width
ACCOUNT_COLUMNS = [
    Column("number", 8),
    ("opened", 10, date),
    ("balance", 9, Decimal),
    Column("active", 5, bool),
]


def test_fixed_width_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "accounts.txt"
    accounts = [
        Account("A-1", date(2020, 1, 31), Decimal("12.50"), True),
        {"number": "B-22", "opened": date(2021, 6, 1), "balance": -3, "active": False},
    ]
    run_writer(FixedWidthItemWriter(path, ACCOUNT_COLUMNS), [accounts])
    assert path.read_text() == (
        "A-1     2020-01-31    12.50true \nB-22    2021-06-01       -3false\n"
    )
    back = read_all(FixedWidthItemReader(path, ACCOUNT_COLUMNS, model=Account))
    assert back == [
        Account("A-1", date(2020, 1, 31), Decimal("12.50"), True),
        Account("B-22", date(2021, 6, 1), Decimal(-3), False),
    ]
    as_dicts = read_all(FixedWidthItemReader(path, ACCOUNT_COLUMNS))
    assert as_dicts[0] == {
        "number": "A-1",
        "opened": date(2020, 1, 31),
        "balance": Decimal("12.50"),
        "active": True,
    }


def test_fixed_width_errors_name_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "accounts.txt"
    path.write_text(
        "A-1     2020-01-31    12.50true \n"
        "A-2     2020-13-01     1.00true \n"
        "A-3     2020-01-01     x.00true \n"
        "A-4     2020-01-01     1.00true  and more\n"
        "A-5     2020-01-01\n"
    )
    reader = copy.copy(FixedWidthItemReader(path, ACCOUNT_COLUMNS))
    reader.open(make_ctx())
    assert reader.read()["number"] == "A-1"
    for line, field in ((2, "opened"), (3, "balance"), (4, None)):
        with pytest.raises(ItemParseError) as caught:
            reader.read()
        assert (caught.value.line, caught.value.field) == (line, field)
        assert str(caught.value).startswith(f"accounts.txt line {line}")
    # a short line: trailing blanks trimmed, missing values are None
    assert reader.read() == {
        "number": "A-5",
        "opened": date(2020, 1, 1),
        "balance": None,
        "active": None,
    }
    assert reader.read() is None


@pytest.mark.parametrize("fill", [" ", "."])
def test_fixed_width_chunks_of_plain_dicts_write_what_items_one_by_one_do(
    tmp_path: Path, fill: str
) -> None:
    """A chunk of plain dicts whose columns hold text, or ints and floats, is laid out a
    column at a time; any other item goes through the item-by-item code: the same lines."""
    columns = [
        ("code", 5),
        Column("right", 6, align=">"),
        ("n", 6, int),
        Column("left_n", 7, float, align="<"),
        ("x", 8, float),
        ("text_n", 4),  # numbers in a text column: right-aligned by value
    ]
    chunk = [
        {"code": f"c{i}", "right": "r" * (i % 7), "n": i - 3, "left_n": i / 4, "x": i, "text_n": i}
        for i in range(6)
    ]
    plain = run_writer(FixedWidthItemWriter(tmp_path / "plain.txt", columns, fill=fill), [chunk])
    proxies = [types.MappingProxyType(item) for item in chunk]  # a Mapping, not a dict
    run_writer(FixedWidthItemWriter(tmp_path / "items.txt", columns, fill=fill), [proxies])
    written = (tmp_path / "plain.txt").read_text()
    assert written == (tmp_path / "items.txt").read_text()
    assert written.splitlines()[5] == "c5" + fill * 4 + "rrrrr" + fill * 5 + "2" + "1.25" + (
        fill * 3 + fill * 7 + "5" + fill * 3 + "5"
    )
    assert plain["FixedWidthItemWriter.size"] == len(written)


def test_fixed_width_value_too_wide(tmp_path: Path) -> None:
    writer = copy.copy(FixedWidthItemWriter(tmp_path / "o.txt", [("code", 3), ("n", 2, int)]))
    writer.open(make_ctx())
    with pytest.raises(ItemFormatError, match=r"field 'n': value '123' is 3 characters") as e:
        writer.write([{"code": "ab", "n": 123}])
    assert e.value.field == "n"
    with pytest.raises(ItemFormatError, match="line break"):
        writer.write([{"code": "a\nb", "n": 1}])
    writer.close()


def test_fixed_width_restart(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("".join(f"{i:>4}{'row' + str(i):<6}\n" for i in range(7)))
    columns = [("id", 4, int), ("name", 6)]
    reader = copy.copy(FixedWidthItemReader(path, columns))
    ctx = make_ctx()
    reader.open(ctx)
    assert [r["id"] for r in read_n(reader, 3)] == [0, 1, 2]
    reader.update(ctx)
    reader.close()
    rest = read_all(FixedWidthItemReader(path, columns), persisted(ctx))
    assert [r["id"] for r in rest] == [3, 4, 5, 6]
    assert rest[0]["name"] == "row3"


# ------------------------------------------------------------------------------- list reader
def test_list_reader_restart() -> None:
    template = ListItemReader(range(10))
    reader = copy.copy(template)
    ctx = make_ctx()
    reader.open(ctx)
    assert read_n(reader, 4) == [0, 1, 2, 3]
    reader.update(ctx)
    assert ctx == {"ListItemReader.index": 4}
    reader.read()  # not committed
    assert read_all(template, persisted(ctx)) == [4, 5, 6, 7, 8, 9]
    assert read_all(template) == list(range(10))  # the template itself was never advanced


def test_list_reader_partition_and_name() -> None:
    reader = ListItemReader("abcdefgh", name="letters")
    ctx = make_ctx(partition={"start": 2, "end": 4})
    assert read_all(reader, ctx) == ["c", "d", "e"]
    r = copy.copy(reader)
    r.open(ctx)
    r.read()
    r.update(ctx)
    assert ctx == {"letters.index": 3}
    assert read_all(reader, persisted(ctx)) == ["d", "e"]
