"""Jobs of the tests that every way the daemon starts an execution runs it in a worker
process (``tests/daemon/test_workers_triggers.py``)."""

from __future__ import annotations

import datetime as dt
import time

from pydantic import BaseModel

import batchd
from batchd import JobBuilder, StepBuilder, StepContext
from batchd.items import ListItemReader

ITEMS = 400


class Work(BaseModel):
    key: str = ""
    seconds: float = 0.0


class Dated(BaseModel):
    date: dt.date


def work(ctx: StepContext) -> None:
    deadline = time.monotonic() + ctx.params.seconds
    while time.monotonic() < deadline:
        ctx.check_stop()
        time.sleep(0.01)


def halves(n: int, params: object) -> list[dict[str, int]]:
    size = ITEMS // n
    return [{"start": i * size, "end": (i + 1) * size - 1} for i in range(n)]


def discard(items: list[int]) -> None:
    pass


batchd.register(
    JobBuilder("work").params_model(Work).step(StepBuilder("work").tasklet(work).build()).build()
)
batchd.register(
    JobBuilder("two_steps")
    .params_model(Dated)
    .step(StepBuilder("first").tasklet(lambda ctx: None).build())
    .step(StepBuilder("second").tasklet(lambda ctx: None).build())
    .build()
)
for executor in ("threads", "processes"):
    batchd.register(
        JobBuilder(f"split_{executor}")
        .step(
            StepBuilder("part")
            .reader(ListItemReader(list(range(ITEMS))))
            .writer(discard)
            .chunk_size(20)
            .partitioner(halves, partitions=2)
            .executor(executor)
            .build()
        )
        .build()
    )
