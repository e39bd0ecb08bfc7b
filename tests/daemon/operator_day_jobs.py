"""Jobs of the operator's-day tests (``tests.daemon.test_operator_day``).

``lines`` reads the JSON Lines file ``file`` (trusted: tests put it in their tmp directory)
slowly, ``delay`` seconds an item, failing at the item whose ``n`` is ``fail_at`` (if any),
and writes nothing anywhere: enough to follow its progress, stop it, make it fail, and
restart it where it stopped.
"""

from __future__ import annotations

import time

from pydantic import BaseModel

import batchd
from batchd import JobBuilder, StepBuilder
from batchd.items import JsonLinesItemReader, trusted_path


class LinesParams(BaseModel):
    file: str
    delay: float = 0.01
    fail_at: int | None = None


class Slow:
    """Takes ``delay`` seconds an item and fails at ``fail_at``."""

    def open(self, ctx: batchd.ExecutionContext) -> None:
        self.delay = ctx.params.delay
        self.fail_at = ctx.params.fail_at

    def process(self, item: dict[str, int]) -> dict[str, int]:
        time.sleep(self.delay)
        if item["n"] == self.fail_at:
            raise ValueError(f"item {item['n']} is bad\nsecond line of the message")
        return item


class Nowhere:
    def write(self, items: list[dict[str, int]]) -> None:
        pass


batchd.register(
    JobBuilder("lines")
    .params_model(LinesParams)
    .step(
        StepBuilder("load")
        .reader(JsonLinesItemReader(trusted_path("{file}", "file")))
        .processor(Slow())
        .writer(Nowhere())
        .chunk_size(10)
        .build()
    )
    .build()
)
