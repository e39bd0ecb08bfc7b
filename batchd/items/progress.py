"""How far a reader is through its input, for ``batchd ctl ... --follow``.

A reader may have a ``total(ctx) -> int | None`` hook: how much input there is, computed
once at ``open`` (the file readers: the bytes of their file or partition range; the SQL
reader: a COUNT of its rows). The built-in readers then keep ``{"unit", "done", "total",
"start"}`` under :data:`PROGRESS_KEY` in the step's execution context at every chunk commit
(``start`` is ``done`` when this execution opened the reader: the rate and ETA count only
this execution's work). The ``execution`` control operation sends it as each step's
``progress``; a reader without the hook has none and shows counts and a rate only.
"""

from __future__ import annotations

from typing import Any

from batchd.model import ExecutionContext

PROGRESS_KEY = "batchd.progress"


class Progress:
    """One reader's progress: ``done`` out of ``total`` ``unit`` (``bytes`` or ``items``)."""

    def __init__(self, unit: str, total: int | None, done: int) -> None:
        self.unit = unit
        self.total = total
        self.start = done
        self.done = done

    def save(self, ctx: ExecutionContext) -> None:
        if self.total is not None:
            ctx[PROGRESS_KEY] = self.view()

    def view(self) -> dict[str, Any]:
        return {"unit": self.unit, "done": self.done, "total": self.total, "start": self.start}
