"""What the record readers (CSV, JSON Lines, fixed width) share: a line-based file reader
whose records become dicts or instances of a ``model``."""

from __future__ import annotations

from typing import Any

from batchd.items.convert import ItemModel
from batchd.items.files import ChecksumSpec, FileItemReader, PathLike


class ModelFileReader(FileItemReader):
    """A :class:`FileItemReader` building its items with :class:`ItemModel`: dicts when
    ``model`` is None, else instances of the pydantic model or dataclass ``model``."""

    # Text formats: an empty value is None for a field that allows None.
    _blank_is_none = False

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

    def _next_line_text(self) -> tuple[int, str] | None:
        """What ``_next_text()`` returns, in one Python frame a line once the first line (and
        its byte-order mark) is read and where no byte range ends the reading."""
        source = self._source
        if source is None or source.offset == 0 or self._end is not None:
            return self._next_text()
        readline, encoding = source._readline, self.encoding
        while True:
            raw = readline()
            if not raw:
                return None
            source.offset += len(raw)
            source.line += 1
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                text = source.decode(raw, source.line)  # raises the error naming the line
            text = text.rstrip("\r\n")
            if text.strip():
                return source.line, text
