"""CsvItemReader: records, models, bad rows, restart, partitions; CsvItemWriter details."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import pickle
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel

from batchd.errors import BatchError, InputFileNotFound, ItemFormatError, ItemParseError
from batchd.items import CsvItemReader, CsvItemWriter
from tests.items.helpers import make_ctx, persisted, read_all, read_n, run_writer

PAYMENTS = (
    "id,payer,amount,booked\n"
    "1,alice,10.50,2026-11-21\n"
    "2,bob,7,2026-11-21\n"
    "3,carol,abc,2026-11-21\n"
    "4,dave,3.25,2026-11-22\n"
)


class Payment(BaseModel):
    id: int
    payer: str
    amount: Decimal
    booked: date


@dataclasses.dataclass
class PaymentRow:
    id: int
    payer: str
    amount: Decimal
    booked: date
    note: str | None = None
    urgent: bool = False


def write(tmp_path: Path, text: str, name: str = "payments.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_dicts(tmp_path: Path) -> None:
    items = read_all(CsvItemReader(write(tmp_path, PAYMENTS)))
    assert items[0] == {"id": "1", "payer": "alice", "amount": "10.50", "booked": "2026-11-21"}
    assert len(items) == 4


def test_header_names_are_keys_as_written(tmp_path: Path) -> None:
    # Any text is a field name: quotes, backslashes, braces, code; a repeated name keeps
    # its last value, as dict(zip(header, row)) does.
    names = ["id", "it's", 'say "hi"', "back\\slash", "}{", "__import__('os')", "id", ""]
    header = ",".join('"' + name.replace('"', '""') + '"' for name in names)
    path = write(tmp_path, header + "\n" + "1,2,3,4,5,6,7,8\n")
    (item,) = read_all(CsvItemReader(path))
    assert item == dict(zip(names, "12345678", strict=True))
    assert item["id"] == "7" and list(item) == ["id", *names[1:6], ""]


def test_pydantic_model_and_bad_row_names_line_and_field(tmp_path: Path) -> None:
    reader = copy.copy(CsvItemReader(write(tmp_path, PAYMENTS), model=Payment))
    reader.open(make_ctx())
    first, second = read_n(reader, 2)
    assert first == Payment(id=1, payer="alice", amount=Decimal("10.50"), booked=date(2026, 11, 21))
    assert second.amount == Decimal(7)
    with pytest.raises(ValueError) as caught:  # what skip(on=(ValueError,)) catches
        reader.read()
    error = caught.value
    assert isinstance(error, ItemParseError) and isinstance(error, BatchError)
    assert (error.line, error.field) == (4, "amount")
    assert str(error).startswith("payments.csv line 4, field 'amount': ")
    assert "decimal" in str(error).lower()
    assert error.path == str(tmp_path / "payments.csv")
    assert reader.read().id == 4  # it continues with the next row
    assert reader.read() is None
    reader.close()


def test_dataclass_model_converts_by_type_hints(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "id,payer,amount,booked,note,urgent,extra\n"
        "1,alice,10.50,2026-11-21,,yes,x\n"
        "2,bob,1e2,2026-11-22,late,false,y\n"
        "x,bob,1,2026-11-22,,false,y\n",
    )
    reader = copy.copy(CsvItemReader(path, model=PaymentRow))
    reader.open(make_ctx())
    assert reader.read() == PaymentRow(1, "alice", Decimal("10.50"), date(2026, 11, 21), None, True)
    assert reader.read() == PaymentRow(2, "bob", Decimal("1E+2"), date(2026, 11, 22), "late", False)
    with pytest.raises(ItemParseError) as caught:
        reader.read()
    assert (caught.value.line, caught.value.field) == (4, "id")
    assert reader.read() is None


def test_header_missing_a_required_field_fails_at_open(tmp_path: Path) -> None:
    path = write(tmp_path, "id,payer\n1,alice\n")
    with pytest.raises(ItemParseError, match="no column 'amount'"):
        copy.copy(CsvItemReader(path, model=Payment)).open(make_ctx())


def test_wrong_field_count_and_undecodable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"a,b\n1,2\n1,2,3\n\xff\xfe,9\n\n5,6\n")
    reader = copy.copy(CsvItemReader(path))
    reader.open(make_ctx())
    assert reader.read() == {"a": "1", "b": "2"}
    with pytest.raises(ItemParseError, match=r"in\.csv line 3: expected 2 fields, found 3"):
        reader.read()
    with pytest.raises(ItemParseError, match=r"in\.csv line 4: cannot decode") as caught:
        reader.read()
    assert caught.value.line == 4
    assert reader.read() == {"a": "5", "b": "6"}  # the blank line 5 is skipped
    assert reader.read() is None


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(InputFileNotFound) as caught:
        copy.copy(CsvItemReader(path)).open(make_ctx())
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, BatchError)
    assert str(path) in str(caught.value)


def test_restart_with_multiline_quoted_fields(tmp_path: Path) -> None:
    text = (
        "id,text\n"
        '1,"one\nline two"\n'
        "2,plain\n"
        '3,"three\n\nlines, with a comma"\n'
        '4,"x ""quoted"""\n'
        "5,bad,row\n"
        "6,last\n"
    )
    path = write(tmp_path, text, "notes.csv")
    reader = copy.copy(CsvItemReader(path))
    ctx = make_ctx()
    reader.open(ctx)
    assert [i["id"] for i in read_n(reader, 2)] == ["1", "2"]
    reader.update(ctx)
    assert ctx["CsvItemReader.line"] == 4
    reader.read()  # read but never committed: the restart reads it again
    reader.close()

    again = copy.copy(CsvItemReader(path))
    again.open(persisted(ctx))
    third = again.read()
    assert third == {"id": "3", "text": "three\n\nlines, with a comma"}
    assert again.read() == {"id": "4", "text": 'x "quoted"'}
    with pytest.raises(ItemParseError) as caught:
        again.read()
    assert caught.value.line == 9  # physical line, multi-line records counted
    assert again.read() == {"id": "6", "text": "last"}
    assert again.read() is None


def test_byte_range_partitions_cover_every_row_once(tmp_path: Path) -> None:
    lines = ["id,value"] + [f"{i},{'x' * (i % 7)}" for i in range(200)]
    path = write(tmp_path, "\n".join(lines) + "\n", "big.csv")
    size = path.stat().st_size
    bounds = [0, size // 3, size // 3 + 1, 2 * size // 3, size]
    seen = []
    for start, end in itertools.pairwise(bounds):
        ctx = make_ctx(partition={"start_offset": start, "end_offset": end})
        seen += [int(i["id"]) for i in read_all(CsvItemReader(path), ctx)]
    assert seen == list(range(200))


def test_line_numbers_inside_a_partition(tmp_path: Path) -> None:
    path = write(tmp_path, "a\n1\n2\nx,y\n4\n", "p.csv")
    # byte 3 is inside line 2 ("1\n" starts at 2): the partition starts with line 3
    ctx = make_ctx(partition={"start_offset": 3, "end_offset": 100})
    reader = copy.copy(CsvItemReader(path))
    reader.open(ctx)
    assert reader.read() == {"a": "2"}
    with pytest.raises(ItemParseError) as caught:
        reader.read()
    assert caught.value.line == 4


def test_byte_order_mark_and_other_delimiters(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffid;name\n1;Zoë\n".encode())
    assert read_all(CsvItemReader(path, delimiter=";")) == [{"id": "1", "name": "Zoë"}]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,name\n1,Zoë\n".encode("latin-1"))
    assert read_all(CsvItemReader(latin, encoding="latin-1")) == [{"id": "1", "name": "Zoë"}]


def test_reader_pickles(tmp_path: Path) -> None:
    reader = CsvItemReader(write(tmp_path, PAYMENTS), model=Payment, name="payments")
    clone = pickle.loads(pickle.dumps(reader))
    clone.open(make_ctx())
    assert [p.id for p in read_n(clone, 2)] == [1, 2]
    clone.close()
    ctx = make_ctx()
    opened = copy.copy(reader)
    opened.open(ctx)
    opened.read()
    opened.update(ctx)
    assert ctx["payments.line"] == 2 and "CsvItemReader.line" not in ctx
    pickle.dumps(opened)
    opened.close()


def test_writer_models_and_values(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    items = [
        Payment(id=1, payer="a, b", amount=Decimal("1.10"), booked=date(2026, 1, 2)),
        PaymentRow(2, 'say "hi"', Decimal("2"), date(2026, 1, 3), None, True),
    ]
    writer = CsvItemWriter(path, fields=["id", "payer", "amount", "booked", "urgent"])
    run_writer(writer, [items])
    assert path.read_text() == (
        "id,payer,amount,booked,urgent\n"
        '1,"a, b",1.10,2026-01-02,\n'
        '2,"say ""hi""",2,2026-01-03,true\n'
    )
    back = read_all(CsvItemReader(path, model=PaymentRow))
    assert back[1] == PaymentRow(2, 'say "hi"', Decimal(2), date(2026, 1, 3), None, True)


def test_writer_derived_fields_survive_restart_and_reject_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    template = CsvItemWriter(path, header=True)
    writer = copy.copy(template)
    ctx = make_ctx()
    writer.open(ctx)
    writer.write([{"b": 1, "a": 2}])
    writer.update(ctx)
    assert ctx["CsvItemWriter.fields"] == ["b", "a"]
    with pytest.raises(ItemFormatError, match="'c'"):
        writer.write([{"b": 1, "c": 2}])
    writer.close()
    run_writer(template, [[{"a": 4, "b": 3}]], persisted(ctx))
    assert path.read_text() == "b,a\n1,2\n3,4\n"


def test_writer_without_header_and_empty_output(tmp_path: Path) -> None:
    run_writer(CsvItemWriter(tmp_path / "a.csv", header=False), [[{"x": 1}]])
    assert (tmp_path / "a.csv").read_text() == "1\n"
    run_writer(CsvItemWriter(tmp_path / "b.csv", fields=["x", "y"]), [])
    assert (tmp_path / "b.csv").read_text() == "x,y\n"


def test_input_shorter_than_checkpoint(tmp_path: Path) -> None:
    from batchd.errors import CheckpointMismatch

    path = write(tmp_path, PAYMENTS)
    ctx = make_ctx({"CsvItemReader.offset": 10_000, "CsvItemReader.line": 99})
    with pytest.raises(CheckpointMismatch, match="has only"):
        copy.copy(CsvItemReader(path)).open(ctx)
