"""Composites: a chain of processors (Spring's CompositeItemProcessor) and a writer that writes
every chunk to several writers (Spring's CompositeItemWriter, GoBatch's multiple writers).

The engine sees only the composite, so the composite is what opens, checkpoints, completes
and closes its inner components, and what copies them for each execution and partition.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any, Self

from batchd.interfaces import item_method
from batchd.model import ExecutionContext

log = logging.getLogger(__name__)


class _Composite:
    """Delegates the ItemStream methods to every inner component that has them, in order
    (``close`` in reverse, all of them even when one fails)."""

    def __init__(self, components: Iterable[Any], method: str, what: str) -> None:
        self.components = list(components)
        if not self.components:
            raise ValueError(f"a composite {what} needs at least one {what}")
        self._calls = [item_method(component, method) for component in self.components]
        self._method = method

    def __copy__(self) -> Self:
        # Each execution and partition gets its own copy of the composite: it needs its own
        # copies of the inner components too (a plain copy would share them).
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.components = [copy.copy(component) for component in self.components]
        clone._calls = [item_method(component, self._method) for component in clone.components]
        return clone

    def __getstate__(self) -> dict[str, Any]:
        return {"components": self.components, "_method": self._method}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._calls = [item_method(component, self._method) for component in self.components]

    def _streams(self, method: str) -> list[Any]:
        return [
            bound
            for component in self.components
            if callable(bound := getattr(component, method, None))
        ]

    def open(self, ctx: ExecutionContext) -> None:
        names = [getattr(c, "name", None) for c in self.components if hasattr(c, "update")]
        clashes = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
        if clashes:
            raise ValueError(
                f"two inner components keep their checkpoint under {clashes[0]!r}: give each "
                "a distinct name="
            )
        for open_ in self._streams("open"):
            open_(ctx)

    def update(self, ctx: ExecutionContext) -> None:
        for update in self._streams("update"):
            update(ctx)

    def close(self) -> None:
        first: Exception | None = None
        for close in reversed(self._streams("close")):
            try:
                close()
            except Exception as error:
                log.exception("closing %r failed", close.__self__)
                first = first or error
        if first is not None:
            raise first


class CompositeItemProcessor(_Composite):
    """``CompositeItemProcessor(p1, p2, ...)``: each item goes through ``p1``, then ``p2``...;
    a processor that returns None filters the item (the later ones do not see it). Each
    processor is a callable or has ``process(item)``."""

    def __init__(self, *processors: Any) -> None:
        super().__init__(processors, "process", "processor")

    def process(self, item: Any) -> Any:
        for process in self._calls:
            item = process(item)
            if item is None:
                return None
        return item


class CompositeItemWriter(_Composite):
    """``CompositeItemWriter(w1, w2, ...)``: every chunk is written to each writer in turn,
    inside the chunk's transaction; a writer that fails rolls the chunk back for all of them
    (file writers cut back to the checkpoint on restart, database writers roll back). Each
    writer is a callable or has ``write(items)``; ``complete(ctx)`` publishes every output.
    Inner writers of the same class need distinct ``name=``."""

    def __init__(self, *writers: Any) -> None:
        super().__init__(writers, "write", "writer")

    def write(self, items: list[Any]) -> None:
        for write in self._calls:
            write(items)

    def complete(self, ctx: ExecutionContext) -> None:
        for complete in self._streams("complete"):
            complete(ctx)
