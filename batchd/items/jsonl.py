"""JSON Lines files: one JSON object per line."""

from __future__ import annotations

import json
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from batchd.errors import ItemFormatError
from batchd.items.convert import item_to_dict
from batchd.items.files import FileItemWriter
from batchd.items.model_reader import ModelFileReader

_UTF8 = frozenset({"utf-8", "utf8", "UTF-8", "UTF8"})


class JsonLinesItemReader(ModelFileReader):
    """Reads a JSON Lines file: each non-blank line is one JSON object.

    Items are dicts, or instances of ``model`` (a pydantic model, validated with
    ``model_validate``, or a dataclass whose fields are converted by their type hints).
    A line that is not valid JSON, not an object, or fails the model raises
    :class:`batchd.errors.ItemParseError` (a ``ValueError``) naming the file, the line and
    the field; the reader has moved past it, so a skipping step continues with the next line.

    Restart: ExecutionContext keys ``<name>.offset`` and ``<name>.line`` (byte offset and
    physical lines after the last item read); ``open(ctx)`` seeks there. Path templates,
    checksum sidecars and byte-range partitions (``start_offset``/``end_offset``) work as
    for :class:`batchd.items.CsvItemReader`.
    """

    def read(self) -> Any:
        source = self._source
        if (
            source is None
            or source.offset == 0  # a byte-order mark is handled line by line
            or self._end is not None
            or self.encoding not in _UTF8
        ):
            return self._read_text()
        # Once per item, so: the line is decoded and parsed in one step (json.loads skips
        # JSON's blanks); a line that is not an object (blank, bad JSON or bytes, another
        # value) goes to the line-by-line code with the line already read, as before.
        while True:
            raw = source._readline()
            if not raw:
                return None
            source.offset += len(raw)
            source.line += 1
            try:
                value = json.loads(raw.decode())
            except ValueError:  # JSONDecodeError, UnicodeDecodeError
                value = None
            if type(value) is dict:
                if self.model is None:
                    return value
                return self._item_model.build(value, self._errors_at(source.line))
            text = source.decode(raw, source.line).rstrip("\r\n")
            if text.strip():
                return self._record(source.line, text)

    def _read_text(self) -> Any:
        record = self._next_text()
        if record is None:
            return None
        return self._record(*record)

    def _record(self, line: int, text: str) -> Any:
        try:
            value = json.loads(text.strip())
        except json.JSONDecodeError as exc:
            raise self._error(line, None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(value, dict):
            raise self._error(line, None, f"expected a JSON object, found {type(value).__name__}")
        return self._item_model.build(value, self._errors_at(line))


def _json_default(value: Any) -> Any:
    if isinstance(value, date | datetime | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class JsonLinesItemWriter(FileItemWriter):
    """Writes each item as one line of compact JSON (UTF-8, non-ASCII kept as is).

    Items are dicts, pydantic models (``model_dump(mode="json")``), dataclasses or named
    tuples; dates are written ISO 8601, Decimals and UUIDs as strings. A value that cannot
    be written raises :class:`batchd.errors.ItemFormatError` before anything of the
    ``write()`` call reaches the file.

    Restartable and atomic like :class:`batchd.items.CsvItemWriter`: ExecutionContext key
    ``<name>.size``; ``complete(ctx)`` renames ``.<file>.partial`` onto the target (with a
    ``.sha256`` sidecar when ``checksum=True``).
    """

    def _encode(self, items: list[Any]) -> bytes:
        lines = []
        for item in items:
            try:
                text = json.dumps(
                    item_to_dict(item, json_mode=True),
                    ensure_ascii=False,
                    separators=(",", ":"),
                    default=_json_default,
                    allow_nan=False,
                )
                lines.append(f"{text}\n".encode())
            except (TypeError, ValueError) as exc:
                if isinstance(exc, ItemFormatError):
                    raise
                raise ItemFormatError(
                    f"cannot write an item as JSON to {self.resolved_path}: {exc}"
                ) from None
        return b"".join(lines)
