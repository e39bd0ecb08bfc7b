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
