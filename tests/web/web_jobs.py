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
from batchd import ExecutionContext, JobBuilder, StepBuilder, StepContext

#: A job name that is also markup: the console must show it as text and never run it.
HOSTILE_JOB = "<script>document.title='pwned'</script>"
#: An exit message that would mark the page if it were taken as HTML.
HOSTILE_MESSAGE = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\"> broke"


class GatedCounter:
    """Reads 0 .. items-1; item i waits until the gate file says more than i."""

    def open(self, ctx: ExecutionContext) -> None:
        self.items = int(ctx.params.get("items", 10))
        gate = ctx.params.get("gate")
        self.gate = Path(gate) if gate else None
        self.index = ctx.get("GatedCounter.index", 0)

    def update(self, ctx: ExecutionContext) -> None:
        ctx["GatedCounter.index"] = self.index

    def close(self) -> None:
        pass

    def read(self) -> int | None:
        if self.index >= self.items:
            return None
        while self.gate is not None and self._allowed() <= self.index:
            time.sleep(0.01)
        self.index += 1
        return self.index - 1

    def _allowed(self) -> int:
        try:
            return int(self.gate.read_text() or 0) if self.gate is not None else self.items
        except (OSError, ValueError):
            return 0


def discard(items: list[Any]) -> None:
    pass


def fail(ctx: StepContext) -> None:
    raise RuntimeError(ctx.params.get("why", "broken"))


def take(ctx: StepContext) -> None:
    pass


batchd.register(
    JobBuilder("eod")
    .step(StepBuilder("load").reader(GatedCounter()).writer(discard).chunk_size(10).build())
    .build()
)
batchd.register(JobBuilder("posting").step(StepBuilder("post").tasklet(fail).build()).build())
batchd.register(JobBuilder(HOSTILE_JOB).step(StepBuilder("t").tasklet(fail).build()).build())
batchd.register(JobBuilder("import_file").step(StepBuilder("take").tasklet(take).build()).build())
