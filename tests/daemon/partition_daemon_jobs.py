"""A partitioned job on worker processes, for the daemon tests
(``jobs = ["tests.daemon.partition_daemon_jobs"]``)."""

from __future__ import annotations

import time
from typing import Any

import batchd
from batchd import JobBuilder, StepBuilder
from batchd.items import ListItemReader

ITEMS = 4000


def halves(n: int, params: Any) -> list[dict[str, int]]:
    size = ITEMS // n
    return [{"start": i * size, "end": (i + 1) * size - 1} for i in range(n)]


def slow(item: int) -> int:
    time.sleep(0.002)
    return item


def discard(items: list[int]) -> None:
    pass


batchd.register(
    JobBuilder("split")
    .step(
        StepBuilder("work")
        .reader(ListItemReader(list(range(ITEMS))))
        .processor(slow)
        .writer(discard)
        .chunk_size(20)
        .partitioner(halves, partitions=2)
        .executor("processes")
        .build()
    )
    .build()
)
