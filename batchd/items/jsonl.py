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

    def _parse_block(self, texts: list[str]) -> list[Any] | None:
        # json.loads of each line by a C-level map (it skips JSON's blanks): a line that is
        # blank, not JSON or not an object, and the block is read line by line.
        try:
            values = list(map(json.loads, texts))
        except ValueError:
            return None
        if set(map(type, values)) != {dict}:
            return None
        return self._build_all(values)

    def _record(self, line: int, text: str) -> Any:
        try:
            value = json.loads(text.strip())
        except json.JSONDecodeError as exc:
            raise self._error(line, None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        except RecursionError:
            raise self._error(line, None, "invalid JSON: nested too deeply") from None
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
        # One encoder for every item (json.dumps with options builds one per call), plain
        # dicts encoded as they are (item_to_dict would copy them), the chunk joined and
        # encoded to UTF-8 at once.
        if not items:
            return b""
        records = items if set(map(type, items)) == {dict} else map(_json_record, items)
        try:
            return ("\n".join(map(_ENCODER.encode, records)) + "\n").encode()
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ItemFormatError):
                raise
            raise ItemFormatError(
                f"cannot write an item as JSON to {self.resolved_path}: {exc}"
            ) from None


def _json_record(item: Any) -> dict[str, Any]:
    return item_to_dict(item, json_mode=True)


# Compact JSON, non-ASCII kept as is, NaN and infinities refused (no JSON holds them).
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=_json_default, allow_nan=False
)
