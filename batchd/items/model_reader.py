"""What the record readers (CSV, JSON Lines, fixed width) share: a line-based file reader
whose records become dicts or instances of a ``model``, and, for the formats of one record a
line (JSON Lines, fixed width), the reading ahead of whole blocks of lines."""

from __future__ import annotations

import codecs
import io
import itertools
import operator
from typing import Any

from batchd.items.convert import ItemModel
from batchd.items.files import ChecksumSpec, FileItemReader, PathLike
from batchd.model import ExecutionContext

# Bytes of the file read ahead at a time (then up to the end of the line).
_READ_AHEAD = 1 << 16
# Encodings (codecs' names) a block of whole lines decodes with as its lines one by one.
_BLOCK_DECODABLE = frozenset({"utf-8", "ascii", "iso8859-1", "cp1252"})


class _Redo(Exception):
    """A record of a block read ahead that is not built with the others: it is read again
    line by line, which raises its error (naming its line) in turn."""


def _redo(field: str | None, message: str) -> Exception:
    return _Redo()


class _Block:
    """Whole lines read ahead: their raw bytes, the byte offset after each (``ends[0]`` is
    where the block starts), the physical lines before it, its items (one a line, or None:
    read line by line) and the index of the next line to hand out."""

    __slots__ = ("ends", "items", "line", "next", "raws")

    def __init__(self, raws: list[bytes], start: int, line: int) -> None:
        self.raws = raws
        self.ends = list(itertools.accumulate(map(len, raws), initial=start))
        self.line = line
        self.items: list[Any] | None = None
        self.next = 0


class ModelFileReader(FileItemReader):
    """A :class:`FileItemReader` building its items with :class:`ItemModel`: dicts when
    ``model`` is None, else instances of the pydantic model or dataclass ``model``.

    A format of one record a line gives ``_record`` (a line's item, or its error) and
    ``_parse_block`` (the items of many lines at once, or None); without a byte range to stop
    at, the lines are then read ahead a block at a time and handed out by ``read()`` and
    ``read_many()``, the position saved by ``update`` being the one after the last item
    handed out. A block that ``_parse_block`` does not take (a blank line, a bad value,
    undecodable bytes) is read line by line, as with a byte range.
    """

    # Text formats: an empty value is None for a field that allows None.
    _blank_is_none = False
    _runtime: tuple[str, ...] = (*FileItemReader._runtime, "_block", "_raise_next")

    def __init__(
        self,
        path: PathLike,
        *,
        model: type[Any] | None = None,
        encoding: str = "utf-8",
        name: str | None = None,
        require_checksum: ChecksumSpec = False,
    ) -> None:
        super().__init__(path, encoding=encoding, name=name, require_checksum=require_checksum)
        self.model = model
        self._item_model = ItemModel(model, blank_is_none=self._blank_is_none)
        self._block: _Block | None = None  # the lines read ahead last
        self._raise_next: Exception | None = None  # what read_many met after its items

    def _record(self, line: int, text: str) -> Any:
        """The item of the non-blank ``text`` (without its line ending) of physical line
        ``line``; raises :class:`ItemParseError` naming the line when it has none."""
        raise NotImplementedError

    def _parse_block(self, texts: list[str]) -> list[Any] | None:
        """The items of ``texts`` (lines without their endings), one a line, as ``_record``
        would build them; None when one of them is not that simple (a blank line, a value
        that raises): the block is then read line by line."""
        return None

    def _build_all(self, records: list[dict[str, Any]]) -> list[Any] | None:
        """``records``' items (the records themselves without a model), or None when one
        of them does not build: the line-by-line reading raises its error in turn."""
        if self.model is None:
            return records
        build = self._item_model.build
        try:
            return [build(record, _redo) for record in records]
        except Exception:  # raised again, at its line, by _record
            return None

    def read(self) -> Any:
        # Once per item when the step has retry or skip: the next item of a block in a few
        # bytecodes; the rest (the next block, a line-by-line block, a byte range) below.
        block = self._block
        if block is not None and block.items is not None and block.next < len(block.items):
            item = block.items[block.next]
            block.next += 1
            return item
        return self._read_on()

    def read_many(self, n: int) -> list[Any]:
        """Up to ``n`` items at once (:class:`batchd.interfaces.BatchReader`): slices of the
        blocks read ahead, and what ``read()`` returns in between."""
        items: list[Any] = []
        while len(items) < n:
            block = self._block
            if block is not None and block.items is not None and block.next < len(block.items):
                taken = block.items[block.next : block.next + n - len(items)]
                block.next += len(taken)
                items += taken
                continue
            try:
                item = self.read()  # the next block, a line of a line-by-line one, an error
            except Exception as error:
                if not items:
                    raise
                # Hand out what was read, and raise the error on the next call, as read()
                # would have: the failed line is consumed, the ones after it come next.
                self._raise_next = error
                break
            if item is None:
                break
            items.append(item)
        return items

    def _read_on(self) -> Any:
        if self._raise_next is not None:
            error, self._raise_next = self._raise_next, None
            raise error
        source = self._opened()
        if self._end is not None:
            entry = self._next_text()
            return None if entry is None else self._record(*entry)
        while True:
            block = self._block
            if block is not None and block.items is not None:
                if block.next < len(block.items):
                    return self.read()
            elif block is not None and block.next < len(block.raws):
                index = block.next
                block.next += 1  # a bad line is consumed: the reading goes on after it
                line = block.line + index + 1
                first = block.ends[index] == 0
                text = source.decode(block.raws[index], line, first=first).rstrip("\r\n")
                if text.strip():
                    return self._record(line, text)
                continue
            if not self._read_block():
                return None

    def _read_block(self) -> bool:
        """Read the next block of whole lines; False at the end of the file."""
        source = self._opened()
        previous = self._block
        start = source.offset if previous is None else previous.ends[-1]
        line = source.line if previous is None else previous.line + len(previous.raws)
        data = source._file.read(_READ_AHEAD)
        if not data:
            return False
        if not data.endswith(b"\n"):
            data += source._readline()
        block = _Block(list(io.BytesIO(data)), start, line)
        texts = self._decoded(data, block.raws)
        if texts is not None:
            if start == 0 and texts[0].startswith("\ufeff"):
                texts[0] = texts[0][1:]  # a byte-order mark is not part of the first field
            try:
                block.items = self._parse_block(texts)
            except Exception:
                # Whatever a block's parsing meets (a JSON nested too deeply, a converter's
                # own error) is met again, at its line, by the line-by-line reading; raised
                # from here it would lose the block's lines, already read from the file.
                block.items = None
        self._block = block
        return True

    def _decoded(self, data: bytes, raws: list[bytes]) -> list[str] | None:
        """The lines of ``data`` decoded, without their endings (as ``rstrip("\\r\\n")``
        leaves them); None when a line does not decode (its error is the line's)."""
        encoding = self.encoding
        try:
            if codecs.lookup(encoding).name in _BLOCK_DECODABLE:
                text = data.decode(encoding)
            else:
                text = "".join(map(operator.methodcaller("decode", encoding), raws))
        except UnicodeDecodeError:
            return None
        texts = text.split("\n")
        if not texts[-1]:
            texts.pop()  # after the last line's \n
        if "\r" in text:
            texts = list(map(operator.methodcaller("rstrip", "\r"), texts))
        return texts

    def update(self, ctx: ExecutionContext) -> None:
        block, source = self._block, self._source
        if block is not None and source is not None:
            # The position after the last item handed out, not after the block.
            source.offset = block.ends[block.next]
            source.line = block.line + block.next
        super().update(ctx)

    def close(self) -> None:
        self._block = self._raise_next = None
        super().close()
