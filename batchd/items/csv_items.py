"""CSV files: a reader of header-named records and a restartable, atomic writer."""

from __future__ import annotations

import csv
import io
import itertools
import operator
from collections.abc import Sequence
from typing import Any

from batchd.errors import ItemFormatError
from batchd.items.convert import (
    ItemModel,
    field_names,
    format_text,
    item_to_dict,
    model_fields,
)
from batchd.items.files import (
    ChecksumSpec,
    FileItemReader,
    FileItemWriter,
    LineSource,
    PathLike,
)
from batchd.model import ExecutionContext


class CsvItemReader(FileItemReader):
    """Reads a CSV file whose first row names the fields.

    Items are dicts (field -> text), or instances of ``model``: a pydantic model
    (``model_validate``) or a dataclass (fields converted by their type hints: int, float,
    str, bool, Decimal, date, datetime). An empty value is None for a field that allows None,
    and the default for a non-text field that has one. Blank lines are skipped; quoted
    fields may span lines.

    A bad record (wrong number of fields, a value that fails conversion or validation,
    undecodable bytes) raises :class:`batchd.errors.ItemParseError`, a ``ValueError`` naming
    the file, the line where the record starts and the field, e.g.
    ``payments.csv line 17, field 'amount': Input should be a valid number``; the reader has
    moved past it, so a step that skips ValueError continues with the next record.

    Restart: ExecutionContext keys ``<name>.offset`` (byte offset after the last item read)
    and ``<name>.line`` (physical lines before it); ``open(ctx)`` re-reads the header and
    seeks there. The path may be a template (``"in/payments_{date:%Y%m%d}.csv"``); a
    ``.sha256`` / ``.md5`` sidecar beside the file is verified in ``open()``. In a partition,
    ``ctx.partition`` ``{"start_offset": a, "end_offset": b}`` limits it to the records that
    start in that byte range (records must not span lines then).
    """

    _runtime: tuple[str, ...] = (*FileItemReader._runtime, "_rows", "_header", "_fast", "_sizes")

    def __init__(
        self,
        path: PathLike,
        *,
        model: type[Any] | None = None,
        delimiter: str = ",",
        quotechar: str = '"',
        encoding: str = "utf-8",
        name: str | None = None,
        require_checksum: ChecksumSpec = False,
    ) -> None:
        super().__init__(path, encoding=encoding, name=name, require_checksum=require_checksum)
        self.model = model
        self.delimiter = delimiter
        self.quotechar = quotechar
        self._item_model = ItemModel(model, blank_is_none=True)
        self._rows: Any = None  # a csv.reader over the LineSource
        self._header: list[str] | None = None
        # Without a byte range to stop at, the records come from a csv.reader over C-level
        # iterators (the file's readline, decode); the offset and line of the LineSource are
        # brought up to date from the lines' sizes when they are needed (_sync).
        self._fast: Any = None
        self._sizes: Any = None
        self._fast_base = 0  # physical lines read before the fast reader started
        self._fast_extra = 0  # lines consumed that csv.reader did not count (undecodable)
        self._synced = 0  # lines of the fast reader already added to the LineSource

    @property
    def header(self) -> list[str] | None:
        """The field names read from the first row, once opened."""
        return self._header

    def _begin(self, source: LineSource) -> None:
        self._rows = csv.reader(source, delimiter=self.delimiter, quotechar=self.quotechar)
        self._header = []
        for row in self._rows:
            if row:
                self._header = [name.strip() for name in row]
                break
        missing = self._item_model.missing_fields(self._header)
        if self._header and missing:
            raise self._error(
                source.line,
                missing[0],
                f"the header has no column {missing[0]!r}, "
                f"which {getattr(self.model, '__name__', 'the model')} requires "
                f"(header: {', '.join(self._header)})",
            )

    def _start_fast(self, source: LineSource) -> Any:
        # The LineSource's bound readline, so that iterating costs no Python call a line.
        raw, sizes = itertools.tee(iter(source._readline, b""))
        self._sizes = map(len, sizes)
        texts = map(operator.methodcaller("decode", self.encoding), raw)
        self._fast = csv.reader(texts, delimiter=self.delimiter, quotechar=self.quotechar)
        self._fast_base, self._fast_extra, self._synced = source.line, 0, 0
        return self._fast

    def _sync(self) -> None:
        source = self._source
        if self._fast is None or source is None:
            return
        lines = self._fast.line_num + self._fast_extra - self._synced
        if lines:
            source.offset += sum(itertools.islice(self._sizes, lines))
            source.line += lines
            self._synced += lines

    def update(self, ctx: ExecutionContext) -> None:
        self._sync()
        super().update(ctx)

    def close(self) -> None:
        self._fast = self._sizes = None
        super().close()

    def _read_fast(self, source: LineSource) -> Any:
        rows = self._fast or self._start_fast(source)
        header = self._header or []
        while True:
            start = self._fast_base + rows.line_num + self._fast_extra + 1
            try:
                row = next(rows)
            except StopIteration:
                return None
            except csv.Error as exc:
                raise self._error(start, None, str(exc)) from None
            except UnicodeDecodeError as exc:
                self._fast_extra += 1  # the line was read; csv.reader did not count it
                raise self._error(
                    start,
                    None,
                    f"cannot decode bytes as {self.encoding}: {exc.reason} "
                    f"at column {exc.start + 1}",
                ) from None
            if rows.line_num - self._synced > _SYNC_LINES:
                self._sync()  # bounds what the tee keeps
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise self._error(start, None, f"expected {len(header)} fields, found {len(row)}")
            record = dict(zip(header, row))  # noqa: B905 (lengths checked above)
            if self.model is None:
                return record
            return self._item_model.build(record, self._errors_at(start))

    def read(self) -> Any:
        if self._end is None and self._source is not None:
            return self._read_fast(self._source)
        # Once per item, so the checks of _opened() and _at_end() are inlined, and the
        # error closure for the model is built only when there is a model (a dict record
        # cannot fail to build).
        source = self._source
        if source is None:
            raise RuntimeError(f"{self.name} is not open: call open(ctx) first")
        header = self._header or []
        rows = self._rows
        end = self._end
        while True:
            if end is not None and source.offset >= end:
                return None  # the partition's byte range is done
            start = source.line + 1
            try:
                row = next(rows)
            except StopIteration:
                return None
            except csv.Error as exc:
                raise self._error(start, None, str(exc)) from None
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise self._error(start, None, f"expected {len(header)} fields, found {len(row)}")
            # The lengths are equal (checked above); zip's strict=True would cost a third
            # of the record's construction (keyword arguments take zip's slow path).
            record = dict(zip(header, row))  # noqa: B905
            if self.model is None:
                return record
            return self._item_model.build(record, self._errors_at(start))


# Values csv.writer writes as format_text() would: str as it is, int and float as str(),
# None as an empty field.
_PLAIN_TYPES = frozenset({str, int, float, type(None)})


def _plain_rows(items: list[Any], fields: list[str], allowed: set[str] | None) -> Any:
    """The rows of a chunk of plain dicts that have every field, no other key and only
    values of _PLAIN_TYPES, found with C-level passes (map, itemgetter); None when any item
    is otherwise, and the writer's loop handles the chunk."""
    if set(map(type, items)) != {dict}:
        return None
    if allowed is not None and not all(map(allowed.issuperset, items)):
        return None
    getter = operator.itemgetter(*fields)
    try:
        rows = list(map(getter, items))
    except KeyError:
        return None  # a missing field is written empty by the loop
    if len(fields) == 1:
        rows = [(value,) for value in rows]
    if not _PLAIN_TYPES.issuperset(map(type, itertools.chain.from_iterable(rows))):
        return None
    return rows


# Lines the fast reader may read before it brings the LineSource's offset up to date.
_SYNC_LINES = 4096


class CsvItemWriter(FileItemWriter):
    """Writes items as CSV rows, with a header row unless ``header=False``.

    Items are dicts, pydantic models, dataclasses or named tuples. ``fields`` chooses the
    columns and their order (other keys are left out); without it they are those of the
    first item (and an item with another key is an error). None is written empty, booleans
    ``true``/``false``, dates ISO 8601. Rows end with ``lineterminator`` (``"\\n"``).

    Restartable and atomic (see :class:`batchd.items.files.FileItemWriter`): rows go to
    ``.<file>.partial`` beside the target; ExecutionContext keys ``<name>.size`` (bytes
    committed) and, when the columns came from the first item, ``<name>.fields``.
    ``complete(ctx)`` renames the partial file onto the target (and writes
    ``<file>.sha256`` when ``checksum=True``). A restart truncates the partial file to the
    committed size and appends, so the result is byte for byte that of an uninterrupted run.
    A full disk raises :class:`batchd.errors.OutputFileError` naming the file; what was
    committed stays intact.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        fields: Sequence[str] | None = None,
        delimiter: str = ",",
        quotechar: str = '"',
        lineterminator: str = "\n",
        encoding: str = "utf-8",
        header: bool = True,
        name: str | None = None,
        checksum: ChecksumSpec = False,
        fsync: bool = True,
        done_flag: bool | str = False,
        model: type[Any] | None = None,
    ) -> None:
        super().__init__(path, name=name, checksum=checksum, fsync=fsync, done_flag=done_flag)
        if fields is None and model is not None:
            fields = model_fields(model)  # the columns of a headerless file, from its model
        self.fields = list(fields) if fields is not None else None
        self.delimiter = delimiter
        self.quotechar = quotechar
        self.lineterminator = lineterminator
        self.encoding = encoding
        self.header = header
        self._fields = self.fields

    def _begin(self, ctx: ExecutionContext) -> None:
        saved = ctx.get(self.key("fields"))
        self._fields = self.fields or (list(saved) if saved else None)
        if self._fields is not None and self._empty and self.header:
            self._append(self._format([self._fields]))

    def _format(self, rows: list[list[str]]) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(
            buffer,
            delimiter=self.delimiter,
            quotechar=self.quotechar,
            lineterminator=self.lineterminator,
        )
        writer.writerows(rows)
        text = buffer.getvalue()
        return self._encode_text(text, self.encoding)

    def _encode(self, items: list[Any]) -> bytes:
        if not items:
            return b""
        rows: list[list[str]] = []
        fields = self._fields
        derived = fields is None
        if fields is None:
            fields = field_names(items[0])
        if self.header and self._empty:
            rows.append(list(fields))
        # Once per item, so: a plain dict is used as it is (item_to_dict would copy it),
        # unknown keys are found with one set test (the error's details are worked out only
        # when there is one), and format_text is called only for values that are not str.
        allowed = set(fields) if derived or self.fields is None else None
        plain = _plain_rows(items, fields, allowed)
        if plain is not None:
            rows.extend(plain)
            items = []  # all of them are in rows already
        for item in items:
            record = item if type(item) is dict else item_to_dict(item)
            if allowed is not None and not allowed.issuperset(record):
                raise self._unknown_field(record, fields)
            rows.append(
                [
                    value if type(value) is str else format_text(value)
                    for value in map(record.get, fields)
                ]
            )
        data = self._format(rows)
        self._fields = fields  # only once the rows are sure to be written
        return data

    def _unknown_field(self, record: dict[str, Any], fields: list[str]) -> ItemFormatError:
        unknown = next(key for key in record if key not in fields)
        return ItemFormatError(
            f"item has field {unknown!r}, which is not a column of "
            f"{self.resolved_path} ({', '.join(fields)})",
            unknown,
        )

    def update(self, ctx: ExecutionContext) -> None:
        super().update(ctx)
        if self.fields is None and self._fields is not None:
            ctx[self.key("fields")] = list(self._fields)
