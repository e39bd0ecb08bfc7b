"""Fixed-width text files: each line is a record, each field a column of fixed width."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from batchd.errors import ItemFormatError
from batchd.items.convert import Converter, format_text, item_to_dict, record_builder
from batchd.items.files import ChecksumSpec, FileItemWriter, PathLike
from batchd.items.model_reader import ModelFileReader

_NUMERIC = (int, float, Decimal)


@dataclass(frozen=True)
class Column:
    """One fixed-width column: its ``name``, ``width`` in characters and value ``type``
    (str, int, float, Decimal, bool, date, datetime). ``align`` is ``"<"`` (left) or
    ``">"`` (right); by default numbers are right-aligned and the rest left-aligned."""

    name: str
    width: int
    type: Any = str
    align: str | None = None

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise ValueError(f"column {self.name!r}: width must be positive, not {self.width}")
        if self.align not in (None, "<", ">"):
            raise ValueError(f"column {self.name!r}: align must be '<' or '>'")

    @property
    def alignment(self) -> str:
        if self.align is not None:
            return self.align
        numeric = isinstance(self.type, type) and issubclass(self.type, _NUMERIC)
        return ">" if numeric and self.type is not bool else "<"


ColumnSpec = Column | tuple[str, int] | tuple[str, int, Any]


def as_columns(columns: Sequence[ColumnSpec]) -> list[Column]:
    """``Column`` objects from Columns or ``(name, width)`` / ``(name, width, type)``."""
    result = []
    for spec in columns:
        result.append(spec if isinstance(spec, Column) else Column(*spec))
    if not result:
        raise ValueError("a fixed-width layout needs at least one column")
    names = [c.name for c in result]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate column names: {', '.join(duplicates)}")
    return result


class FixedWidthItemReader(ModelFileReader):
    """Reads fixed-width lines into dicts (or ``model`` instances).

    Each column's text is stripped of its padding and converted to the column's ``type``;
    a blank value is None for a non-text column. A line shorter than the layout is padded
    (trailing blanks are often trimmed); a longer one, or a value that does not convert,
    raises :class:`batchd.errors.ItemParseError` (a ``ValueError``) naming the file, line and
    field, after which the reader continues with the next line. Blank lines are skipped.

    Restart: ExecutionContext keys ``<name>.offset`` and ``<name>.line``, as for
    :class:`batchd.items.CsvItemReader` (path templates, checksum sidecars and byte-range
    partitions work the same way).
    """

    def __init__(
        self,
        path: PathLike,
        columns: Sequence[ColumnSpec],
        *,
        model: type[Any] | None = None,
        encoding: str = "utf-8",
        name: str | None = None,
        require_checksum: ChecksumSpec = False,
    ) -> None:
        super().__init__(
            path, model=model, encoding=encoding, name=name, require_checksum=require_checksum
        )
        self.columns = as_columns(columns)
        self.width = sum(c.width for c in self.columns)
        # Per column, once: (name, start, end, converter; None for text).
        self._fields: list[tuple[str, int, int, Converter | None]] = []
        position = 0
        for column in self.columns:
            end = position + column.width
            converter = None if column.type is str else Converter(column.type)
            self._fields.append((column.name, position, end, converter))
            position = end
        missing = self._item_model.missing_fields([c.name for c in self.columns])
        if missing:
            raise ValueError(f"the columns do not include {missing[0]!r}, which the model needs")

    def _record(self, line: int, text: str) -> Any:
        if len(text) > self.width:
            raise self._error(
                line, None, f"line is {len(text)} characters long, the columns take {self.width}"
            )
        record: dict[str, Any] = {}
        for name, start, end, convert in self._fields:
            value = text[start:end].strip()
            if convert is None:
                record[name] = value
            elif not value:
                record[name] = None
            else:
                try:
                    record[name] = convert(value)
                except ValueError as exc:
                    raise self._error(line, name, str(exc)) from None
        if self.model is None:
            return record
        return self._item_model.build(record, self._errors_at(line))

    def _parse_block(self, texts: list[str]) -> list[Any] | None:
        # A column at a time, by C-level passes (slices, strip, the type's constructor, the
        # layout's compiled dict display); a blank or too long line, or a value that does
        # not convert, and the block is read line by line (which raises the error naming
        # its line).
        if max(map(len, texts)) > self.width or not all(texts) or any(map(str.isspace, texts)):
            return None
        columns = []
        for _, start, end, convert in self._fields:
            values = map(operator.itemgetter(slice(start, end)), texts)
            column: list[Any] = list(map(str.strip, values))
            if convert is not None:
                direct = convert.target if convert.target in _NUMERIC else convert
                try:
                    if all(column):
                        column = list(map(direct, column))
                    else:
                        column = [direct(value) if value else None for value in column]
                except (ValueError, ArithmeticError):
                    return None
            columns.append(column)
        build = record_builder(tuple(name for name, _, _, _ in self._fields))
        return self._build_all(list(map(build, zip(*columns, strict=True))))


class FixedWidthItemWriter(FileItemWriter):
    """Writes items as fixed-width lines (``\\n``-terminated) laid out by ``columns``.

    Text is left-aligned and numbers right-aligned (unless a column says ``align``), padded
    with ``fill``; None is blank; dates are ISO 8601. A value wider than its column, or
    containing a line break, raises :class:`batchd.errors.ItemFormatError` (a ``ValueError``)
    naming the field, before anything of the ``write()`` call reaches the file. Keys of an
    item that are not columns are left out.

    Restartable and atomic like :class:`batchd.items.CsvItemWriter`: ExecutionContext key
    ``<name>.size``; ``complete(ctx)`` renames ``.<file>.partial`` onto the target (with a
    ``.sha256`` sidecar when ``checksum=True``).
    """

    def __init__(
        self,
        path: PathLike,
        columns: Sequence[ColumnSpec],
        *,
        fill: str = " ",
        encoding: str = "utf-8",
        name: str | None = None,
        checksum: ChecksumSpec = False,
        fsync: bool = True,
        done_flag: bool | str = False,
    ) -> None:
        super().__init__(path, name=name, checksum=checksum, fsync=fsync, done_flag=done_flag)
        if len(fill) != 1:
            raise ValueError("fill must be a single character")
        self.columns = as_columns(columns)
        self.fill = fill
        self.encoding = encoding
        # Per column, once: (name, width, right-aligned, numbers right-aligned by value).
        self._layout = [
            (c.name, c.width, c.alignment == ">", c.align is None) for c in self.columns
        ]

    def _format_line(self, item: Any) -> str:
        # Once per item: a plain dict is not copied, text is not formatted again, and each
        # column's alignment was worked out in __init__ (_layout).
        record = item if type(item) is dict else item_to_dict(item)
        fill = self.fill
        parts = []
        for name, width, right, by_value in self._layout:
            value = record.get(name)
            text = value if type(value) is str else format_text(value)
            if len(text) > width or "\n" in text or "\r" in text:
                raise self._unfit(name, width, text)
            if by_value and isinstance(value, _NUMERIC) and not isinstance(value, bool):
                parts.append(text.rjust(width, fill))  # a number in a column without align
            else:
                parts.append(text.rjust(width, fill) if right else text.ljust(width, fill))
        return "".join(parts) + "\n"

    @staticmethod
    def _unfit(name: str, width: int, text: str) -> ItemFormatError:
        if "\n" in text or "\r" in text:
            return ItemFormatError(f"field {name!r}: value {text!r} contains a line break", name)
        return ItemFormatError(
            f"field {name!r}: value {text!r} is {len(text)} characters, "
            f"wider than its column ({width})",
            name,
        )

    def _plain_lines(self, items: list[Any]) -> str | None:
        """The lines of a chunk of plain dicts whose columns each hold only text, or only
        int and float values, that fit: a column at a time, by C-level passes; None for
        any other chunk, which ``_format_line`` writes item by item (raising its errors)."""
        if set(map(type, items)) != {dict}:
            return None
        columns = []
        for name, width, right, by_value in self._layout:
            values = list(map(operator.methodcaller("get", name), items))
            kinds = set(map(type, values))
            if kinds == {str}:
                texts = values
            elif kinds <= {int, float}:
                texts = list(map(str, values))  # format_text of an int or a float
                right = right or by_value
            else:
                return None  # None, dates, Decimals, booleans...: formatted one by one
            joined = "".join(texts)
            if max(map(len, texts)) > width or "\n" in joined or "\r" in joined:
                return None
            pad = operator.methodcaller("rjust" if right else "ljust", width, self.fill)
            columns.append(map(pad, texts))
        return "\n".join(map("".join, zip(*columns, strict=True))) + "\n"

    def _encode(self, items: list[Any]) -> bytes:
        if not items:
            return b""
        text = self._plain_lines(items)
        if text is None:
            text = "".join(self._format_line(item) for item in items)
        return self._encode_text(text, self.encoding)
