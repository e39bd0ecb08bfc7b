"""Reading items from a list held in memory."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from batchd.items.base import ItemReader
from batchd.model import ExecutionContext


class ListItemReader(ItemReader):
    """Reads the items of a list, in order.

    ExecutionContext key: ``<name>.index`` (``ListItemReader.index`` by default), the index
    of the next unread item, saved by ``update()``. ``open(ctx)`` seeks to it (0 if none), so
    a restart continues after the last committed item. In a partition, ``ctx.partition``
    ``{"start": i, "end": j}`` (both inclusive, as in ``{"start": 0, "end": 49999}``) limits
    the reader to those indexes.
    """

    def __init__(self, items: Iterable[Any], *, name: str | None = None) -> None:
        super().__init__(name)
        self.items = list(items)
        self._index = 0
        self._stop = len(self.items)

    def open(self, ctx: ExecutionContext) -> None:
        partition = ctx.partition or {}
        start = int(partition.get("start", 0))
        end = partition.get("end")
        self._stop = len(self.items) if end is None else min(int(end) + 1, len(self.items))
        self._index = int(ctx.get(self.key("index"), start))

    def read(self) -> Any:
        if self._index >= self._stop:
            return None
        item = self.items[self._index]
        self._index += 1
        return item

    def update(self, ctx: ExecutionContext) -> None:
        ctx[self.key("index")] = self._index
