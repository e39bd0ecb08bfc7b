"""JsonLinesItemReader and FixedWidthItemReader read whole blocks of lines ahead when they
have no byte range to stop at: what they hand out (through read() and read_many()), the
errors they raise (naming their line) and the position they save after each item are those
of the line-by-line reading (a byte range covering the whole file), across block ends, and
a restart from any checkpoint reads the rest."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from batchd.errors import ItemParseError
from batchd.items import FixedWidthItemReader, JsonLinesItemReader, model_reader
from tests.items.helpers import make_ctx, persisted


@dataclasses.dataclass
class Row:
    id: int
    text: str


# The last column is often left blank and trimmed: a line is shorter than the layout.
COLUMNS = [("text", 10), ("id", 6, int), ("note", 4)]


def odd_lines(path: Path, kind: str) -> Path:
    """3,000 records, with what a block cannot take here and there: blank and
    whitespace-only lines, CR LF endings, bad values, too long lines, bytes that are not
    UTF-8, a byte-order mark first and no line ending last."""
    lines = [b"\xef\xbb\xbf"]
    for i in range(3000):
        if kind == "fixed":
            good = f"{'r' + str(i):<10}{i:>6}"
            odd = {
                15: "",
                28: "  \t ",
                41: good + "and more",
                54: good[:10] + "     x",
                67: good[:10] + "      ab",  # a blank int: None
                80: "\u00e9t\u00e9" + good[3:],
            }
        else:
            good = f'{{"id": {i}, "text": "r{i}"}}'
            odd = {
                15: "",
                28: "  \t ",
                41: "[1, 2]",
                54: f'{{"id": "x{i}", "text": "r"}}',  # not an int, for the model
                67: '{"id": ',
                80: f'\u00a0{{"id": {i}, "text": "\u00e9t\u00e9"}}',
            }
        text = odd.get(i % 101, good)  # 13 records apart: each in a block of its own
        if i % 211 == 7:
            lines.append(b"\xff" + text.encode() + b"\n")
        else:
            lines.append(text.encode() + (b"\r\n" if i % 173 == 1 else b"\n"))
    lines.append(b"last        2999" if kind == "fixed" else b'{"id": 2999, "text": "last"}')
    path.write_bytes(b"".join(lines))
    return path


def reader_of(kind: str, path: Path, model: Any) -> Any:
    if kind == "fixed":
        return FixedWidthItemReader(path, COLUMNS, model=model)
    return JsonLinesItemReader(path, model=model)


def outcome(call: Any) -> Any:
    try:
        return call()
    except ItemParseError as error:
        return ("error", error.line, error.field, str(error))


def one_by_one(reader: Any, ctx: Any) -> list[tuple[Any, ...]]:
    """Each read()'s item or error, with the position saved just after it."""
    reader = copy.copy(reader)
    reader.open(ctx)
    seen: list[tuple[Any, ...]] = []
    while True:
        item = outcome(reader.read)
        reader.update(ctx)
        seen.append((item, ctx[reader.key("offset")], ctx[reader.key("line")]))
        if item is None:
            reader.close()
            return seen


@pytest.fixture(params=[None, 100], ids=["64k-blocks", "100-byte-blocks"])
def block(request: Any, monkeypatch: Any) -> None:
    if request.param is not None:  # many blocks: odd lines next to their ends
        monkeypatch.setattr(model_reader, "_READ_AHEAD", request.param)


@pytest.mark.usefixtures("block")
@pytest.mark.parametrize("model", [None, Row])
@pytest.mark.parametrize("kind", ["fixed", "jsonl"])
def test_read_ahead_hands_out_raises_and_saves_what_line_by_line_reading_does(
    tmp_path: Path, kind: str, model: Any
) -> None:
    path = odd_lines(tmp_path / f"odd.{kind}", kind)
    whole = {"start_offset": 0, "end_offset": path.stat().st_size}
    line_by_line = one_by_one(reader_of(kind, path, model), make_ctx(partition=whole))
    ahead = one_by_one(reader_of(kind, path, model), make_ctx())
    assert ahead == line_by_line
    errors = [entry[0] for entry in ahead if isinstance(entry[0], tuple)]
    assert len(errors) > 50
    items = [entry[0] for entry in ahead if type(entry[0]) in (dict, Row)]
    assert len(items) > 2500
    # Errors after blocks read ahead name their physical line (record i is on line i + 1):
    # record 2061 is too long, or not an object, 2117 is not UTF-8.
    (late,) = [error for error in errors if error[1] == 2062]
    assert late[2] is None and late[3].startswith(f"odd.{kind} line 2062: ")
    assert (2118, None) in [error[1:3] for error in errors if "cannot decode" in error[3]]


@pytest.mark.usefixtures("block")
@pytest.mark.parametrize("n", [1, 7, 1000, 5000])
@pytest.mark.parametrize("model", [None, Row])
@pytest.mark.parametrize("kind", ["fixed", "jsonl"])
def test_read_many_hands_out_raises_and_saves_what_read_does(
    tmp_path: Path, kind: str, model: Any, n: int
) -> None:
    path = odd_lines(tmp_path / f"odd.{kind}", kind)
    single = one_by_one(reader_of(kind, path, model), make_ctx())
    reader = copy.copy(reader_of(kind, path, model))
    ctx = make_ctx()
    reader.open(ctx)
    done = 0
    while True:
        items = outcome(lambda: reader.read_many(n))
        reader.update(ctx)
        saved = (ctx[reader.key("offset")], ctx[reader.key("line")])
        if isinstance(items, tuple):  # an error: one read() that raised
            assert single[done] == (items, *saved)
            done += 1
            continue
        assert items == [entry[0] for entry in single[done : done + len(items)]]
        if not items:
            break
        assert 1 <= len(items) <= n
        done += len(items)
        # A full call saves what read() saves after its last item; a short one (cut by the
        # end or an error) what read() saves after the read that returned None or raised.
        assert saved == single[done - (len(items) == n)][1:], done
    reader.close()
    assert single[done] == (None, *saved) and done == len(single) - 1


@pytest.mark.usefixtures("block")
@pytest.mark.parametrize("kind", ["fixed", "jsonl"])
def test_restart_from_any_checkpoint_reads_the_rest(tmp_path: Path, kind: str) -> None:
    path = odd_lines(tmp_path / f"odd.{kind}", kind)
    full = one_by_one(reader_of(kind, path, None), make_ctx())
    for done in (0, 1, 2, 3, 4, 5, 6, 7, 500, 1001, 2061, 2062, len(full) - 2):
        ctx = make_ctx()
        reader = copy.copy(reader_of(kind, path, None))
        reader.open(ctx)
        for _ in range(done):
            outcome(reader.read)
        reader.update(ctx)
        outcome(lambda r=reader: r.read_many(7))  # not committed: read again after restart
        reader.close()
        assert one_by_one(reader_of(kind, path, None), persisted(ctx)) == full[done:], done


def test_a_line_no_block_can_parse_is_an_error_at_its_line_and_the_rest_is_read(
    tmp_path: Path,
) -> None:
    """A line nested deeper than the parser goes (hostile input) fails the block's parsing
    in a way of its own: it is an error naming its line, and a skipping step goes on with
    the next line, not past the lines read ahead with it."""
    path = tmp_path / "deep.jsonl"
    deep = '{"id": 3, "text": ' + "[" * 200_000 + "]" * 200_000 + "}"
    lines = [f'{{"id": {i}, "text": "r{i}"}}' for i in range(1, 3)] + [deep]
    lines += [f'{{"id": {i}, "text": "r{i}"}}' for i in range(4, 7)]
    path.write_text("\n".join(lines) + "\n")
    reader = JsonLinesItemReader(path)
    reader.open(make_ctx())
    read, errors = [], []
    while True:
        try:
            item = reader.read()
        except ItemParseError as error:
            errors.append(str(error))
            continue
        if item is None:
            break
        read.append(item["id"])
    reader.close()
    assert read == [1, 2, 4, 5, 6]
    assert len(errors) == 1 and "line 3" in errors[0] and "nested too deeply" in errors[0]
