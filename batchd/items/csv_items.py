"""CSV files: a reader of header-named records and a restartable, atomic writer."""

from __future__ import annotations

import codecs
import collections
import csv
import io
import itertools
import operator
from collections.abc import Sequence
from typing import Any

from batchd.errors import ItemFormatError
from batchd.items.convert import (
    field_names,
    format_text,
    item_to_dict,
    model_fields,
    record_builder,
)
from batchd.items.files import (
    ChecksumSpec,
    FileItemWriter,
    LineSource,
    PathLike,
)
from batchd.items.model_reader import ModelFileReader
from batchd.model import ExecutionContext


class CsvItemReader(ModelFileReader):
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

    _blank_is_none = True
    _runtime: tuple[str, ...] = (
        *ModelFileReader._runtime,
        *("_rows", "_header", "_fast", "_sizes", "_ready", "_pending", "_rest"),
        "_failure",
    )

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
        super().__init__(
            path, model=model, encoding=encoding, name=name, require_checksum=require_checksum
        )
        self.delimiter = delimiter
        self.quotechar = quotechar
        self._rows: Any = None  # a csv.reader over the LineSource
        self._header: list[str] | None = None
        # Without a byte range to stop at, records are read ahead in batches by C-level
        # iterators (blocks of the file decoded whole and split into lines, csv.reader,
        # the header's record_builder mapped over the rows), and read() or read_many() hand
        # them out; the LineSource's offset and line are brought up to date from the lines'
        # sizes when they are needed (_sync), to just after the last record handed out. Line
        # counts below are the fast reader's, from where it started.
        self._fast: Any = None  # the csv.reader
        self._sizes: Any = None  # the sizes of the lines it has read, not yet synced
        self._ready: Any = None  # the items of the batch not handed out yet
        self._pending: Any = None  # the batch's records (its length hint: those left)
        self._ready_lines: Sequence[int] = ()  # lines read after each of them
        self._rest: Any = None  # rows of the batch after an odd one, read one by one
        self._failure: Any = None  # the error that ended the batch, raised in turn
        self._fast_base = 0  # physical lines read before the fast reader started
        self._fast_extra = 0  # lines consumed that csv.reader did not count (undecodable)
        self._ready_extra = 0  # _fast_extra when the ready batch was read
        self._consumed = 0  # lines read up to the last record handed out, outside a batch
        self._synced = 0  # lines already added to the LineSource

    @property
    def header(self) -> list[str] | None:
        """The field names read from the first row, once opened."""
        return self._header

    def _begin(self, source: LineSource) -> None:
        self._rows = csv.reader(source, delimiter=self.delimiter, quotechar=self.quotechar)
        self._fast = self._ready = None
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

    def _start_fast(self, source: LineSource) -> None:
        sizes: collections.deque[Any] = collections.deque()
        texts = itertools.chain.from_iterable(self._blocks(source, sizes))
        # Sizes are taken only for lines already read, so a block's are always there.
        self._sizes = itertools.chain.from_iterable(iter(sizes.popleft, None))
        self._fast = csv.reader(texts, delimiter=self.delimiter, quotechar=self.quotechar)
        self._fast_base, self._fast_extra, self._synced = source.line, 0, 0
        self._consumed = self._ready_extra = 0
        self._ready = self._pending = iter(())
        self._ready_lines = ()
        self._rest = collections.deque()
        self._failure = None

    def _handed_lines(self) -> int:
        """Lines read up to the last record handed out (or skipped, or failed)."""
        lines = self._ready_lines
        handed = len(lines) - operator.length_hint(self._pending)
        if handed:
            return lines[handed - 1] + self._ready_extra
        return self._consumed

    def _sync(self) -> None:
        source = self._source
        if self._fast is None or source is None:
            return
        lines = self._handed_lines() - self._synced
        if lines:
            source.offset += sum(itertools.islice(self._sizes, lines))
            source.line += lines
            self._synced += lines

    def update(self, ctx: ExecutionContext) -> None:
        self._sync()
        super().update(ctx)

    def _blocks(self, source: LineSource, sizes: collections.deque[Any]) -> Any:
        """The rest of the file as iterables of decoded lines, a block of whole lines at a
        time, each block's line sizes in bytes appended to ``sizes``. A block is decoded in
        one call when the encoding decodes a block as it decodes its lines one by one (no
        state, no byte-order mark, ``\n`` a byte of its own); otherwise, or when the block
        has undecodable bytes, line by line, so that the error is the line's."""
        read, readline, encoding = source._file.read, source._readline, self.encoding
        whole = codecs.lookup(encoding).name in _BLOCK_DECODABLE
        decode = operator.methodcaller("decode", encoding)
        while data := read(_READ_AHEAD):
            if not data.endswith(b"\n"):
                data += readline()
            sizes.append(map(len, io.BytesIO(data)))
            text = None
            if whole:
                try:
                    text = data.decode(encoding)
                except UnicodeDecodeError:
                    pass
            # newline="\n": split on \n only, endings kept, as the file's readline does.
            yield map(decode, io.BytesIO(data)) if text is None else io.StringIO(text, newline="\n")

    def close(self) -> None:
        self._fast = self._sizes = self._ready = self._pending = None
        self._rest = self._failure = None
        self._ready_lines = ()
        super().close()

    def _next_batch(self) -> Any:
        """The next item once the ready ones are handed out: a new batch read ahead, the
        rows after an odd one, the error that ended the batch, or None at the end."""
        if self._fast is None and self._source is not None:
            self._start_fast(self._source)
        self._consumed = self._handed_lines()
        self._ready_lines = ()
        self._ready = self._pending = iter(())
        self._sync()  # bounds what the tee keeps to one batch of lines
        if self._rest:
            return self._read_rest()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self._consumed = self._fast.line_num + self._fast_extra
            raise failure
        rows: list[list[str]] = []
        extra = self._fast_extra  # the batch's rows were read before any undecodable line
        before = self._fast.line_num
        failed: Exception | None = None
        size = _BATCH if self.model is None else _MODEL_BATCH
        try:
            rows.extend(itertools.islice(self._fast, size))
        except (csv.Error, UnicodeDecodeError) as exc:
            failed = exc
        lines = self._lines_after(rows, before, exact=failed is None)
        if failed is not None:
            line = self._fast_base + (lines[-1] + extra if rows else self._consumed) + 1
            message = str(failed)
            if isinstance(failed, UnicodeDecodeError):
                self._fast_extra += 1  # the line was read; csv.reader did not count it
                message = (
                    f"cannot decode bytes as {self.encoding}: {failed.reason} "
                    f"at column {failed.start + 1}"
                )
            self._failure = self._error(line, None, message)
        if not rows:
            self._consumed = self._fast.line_num + self._fast_extra
            if self._failure is not None:
                return self._next_batch()
            return None
        header = self._header or []
        width = len(header)
        good = len(rows)
        if set(map(len, rows)) != {width}:  # a blank line or a wrong number of fields
            good = next(i for i, row in enumerate(rows) if len(row) != width)
            after = [line + extra for line in lines[good:]]
            self._rest.extend(zip(rows[good:], after))  # noqa: B905 (as many)
            rows, lines = rows[:good], lines[:good]
        self._ready_lines, self._ready_extra = lines, extra
        build = record_builder(tuple(header))
        if self.model is None:
            self._pending = iter(list(map(build, rows)))
            self._ready = self._pending
        else:
            # Built by columns as far as that goes (zip takes a built item first, then moves
            # the pending rows on with it), the rest one by one from records, with errors.
            built = self._item_model.build_leading(rows, header)
            self._pending = iter(rows)
            first = map(operator.itemgetter(0), zip(built, self._pending))  # noqa: B905
            records = map(build, self._pending)
            starts = (self._consumed, *[line + extra for line in lines[:-1]])[len(built) :]
            self._ready = itertools.chain(first, map(self._build_at, records, starts))
        return self.read() if good else self._read_rest()

    def _lines_after(self, rows: list[list[str]], before: int, *, exact: bool) -> Sequence[int]:
        """The fast reader's line count after each of ``rows``, read from line ``before``
        on. When they were as many lines as rows (no error cut the batch), a range;
        otherwise a record spans one line more for each \n in its fields (the lines are
        split on \n only, and a record goes on to the next line only inside quotes)."""
        if exact and self._fast.line_num - before == len(rows):
            return range(before + 1, before + len(rows) + 1)
        spans = ["".join(row).count("\n") + 1 for row in rows]
        return list(itertools.accumulate(spans, initial=before))[1:]

    def _build_at(self, record: dict[str, str], before: int) -> Any:
        return self._item_model.build(record, self._errors_at(self._fast_base + before + 1))

    def _read_rest(self) -> Any:
        """The rows of a batch after an odd one (a blank line, a wrong number of fields),
        one at a time, as the line-by-line reader does."""
        header = self._header or []
        while self._rest:
            row, lines = self._rest.popleft()
            start = self._fast_base + self._consumed + 1
            self._consumed = lines
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise self._error(start, None, f"expected {len(header)} fields, found {len(row)}")
            record = dict(zip(header, row))  # noqa: B905 (lengths checked above)
            if self.model is None:
                return record
            return self._item_model.build(record, self._errors_at(start))
        return self._next_batch()

    def read_many(self, n: int) -> list[Any]:
        """Up to ``n`` records at once (:class:`batchd.interfaces.BatchReader`): the ready
        ones taken by C-level ``islice``, then the next batch through ``read()``."""
        items: list[Any] = []
        try:
            while len(items) < n:
                if self._ready is not None:
                    items.extend(itertools.islice(self._ready, n - len(items)))
                    if len(items) == n:
                        break
                item = self.read()  # the next batch, the rows after an odd one, or an error
                if item is None:
                    break
                items.append(item)
        except Exception as error:
            if not items:
                raise
            # Hand out what was read, and raise the error on the next call, as read() would
            # have: the failed record is consumed, the ones after it come next.
            self._ready = itertools.chain(_raising(error), self._ready or ())
        return items

    def read(self) -> Any:
        ready = self._ready
        if ready is not None:
            item = next(ready, None)  # items are never None
            if item is not None:
                return item
        if self._end is None and self._source is not None:
            return self._next_batch()
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


def _raising(error: Exception) -> Any:
    """An iterator whose first next() raises ``error``; after it ``chain`` goes on with the
    next iterable."""
    raise error
    yield  # a generator


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


# Records the fast reader reads ahead at a time.
_BATCH = 512
# With a model, fewer: a batch's row lists and its items are container objects, and with
# 512 of each alive at once every batch set off a young collection of the cyclic garbage
# collector (700 allocations), which also went through the items the step holds; with 128,
# about half as many collections (the items' own allocations set them off).
_MODEL_BATCH = 128
# Bytes of the file it reads at a time (then up to the end of the line).
_READ_AHEAD = 1 << 16
# Encodings (codecs' names) a block of whole lines decodes with as its lines one by one.
_BLOCK_DECODABLE = frozenset({"utf-8", "ascii", "iso8859-1", "cp1252"})


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
