"""Jobs of the web console's tests (``jobs = ["tests.web.web_jobs"]``).

``eod`` counts ``items`` numbers in chunks of 10. With a ``gate`` file it reads item i only
once the file holds a number above i, so a test decides how far a running execution gets
(and sees its progress bar move) without timing anything.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import batchd
from batchd import ExecutionContext, StepContext
from batchd.items import ListItemReader
from tests.support.jobs import chunk_job, tasklet_job

#: A job name that is also markup: the console must show it as text and never run it.
HOSTILE_JOB = "<script>document.title='pwned'</script>"
#: An exit message that would mark the page if it were taken as HTML.
HOSTILE_MESSAGE = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\"> broke"


class GatedCounter(ListItemReader):
    """Reads 0 .. items-1; item i waits until the gate file says more than i."""

    def __init__(self) -> None:
        super().__init__([], name="GatedCounter")

    def open(self, ctx: ExecutionContext) -> None:
        self.items = list(range(int(ctx.params.get("items", 10))))
        gate = ctx.params.get("gate")
        self.gate = Path(gate) if gate else None
        super().open(ctx)

    def read(self) -> int | None:
        item = super().read()
        while item is not None and self.gate is not None and self._allowed() <= item:
            time.sleep(0.01)
        return item

    def _allowed(self) -> int:
        try:
            return int(self.gate.read_text() or 0) if self.gate is not None else len(self.items)
        except (OSError, ValueError):
            return 0


def discard(items: list[Any]) -> None:
    pass


def fail(ctx: StepContext) -> None:
    raise RuntimeError(ctx.params.get("why", "broken"))


def take(ctx: StepContext) -> None:
    pass


batchd.register(chunk_job("eod", GatedCounter(), discard))
batchd.register(tasklet_job("posting", fail, step="post"))
batchd.register(tasklet_job(HOSTILE_JOB, fail, step="t"))
batchd.register(tasklet_job("import_file", take, step="take"))
