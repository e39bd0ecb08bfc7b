"""Jobs of the several-nodes tests (``jobs = ["tests.daemon.node_jobs"]``).

``tick`` runs once per schedule fire: it takes ``BATCHD_TEST_TICK_SECONDS`` and records its
fire time and the node that ran it in ``node_ticks``, in the chunk's transaction, so a fire
run twice shows as two rows. ``long_count`` counts slowly until stopped.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, insert

import batchd
from batchd import ExecutionContext, JobBuilder, StepBuilder
from batchd.items import ListItemReader
from batchd.model import current_chunk_transaction

TICK_SECONDS = float(os.environ.get("BATCHD_TEST_TICK_SECONDS", "1"))
NODE = os.environ.get("BATCHD_TEST_NODE", "")

ticks = Table(
    "node_ticks",
    MetaData(),
    Column("fire_time", String(64), nullable=False),
    Column("node", String(200), nullable=False),
)


class FireTimeReader:
    """Hands out the fire time once; restartable."""

    def open(self, ctx: ExecutionContext) -> None:
        self.fire_time = ctx.params["at"]
        self.done = bool(ctx.get("FireTimeReader.done"))

    def update(self, ctx: ExecutionContext) -> None:
        ctx["FireTimeReader.done"] = self.done

    def read(self) -> str | None:
        if self.done:
            return None
        self.done = True
        return str(self.fire_time)


def slow(item: Any) -> Any:
    time.sleep(TICK_SECONDS)
    return item


def record(fire_times: list[str]) -> None:
    transaction = current_chunk_transaction.get()
    assert transaction is not None
    transaction.connection.execute(
        insert(ticks), [{"fire_time": t, "node": NODE} for t in fire_times]
    )


batchd.register(
    JobBuilder("tick")
    .step(StepBuilder("run").reader(FireTimeReader()).processor(slow).writer(record).build())
    .build()
)
batchd.register(
    JobBuilder("long_count")
    .step(
        StepBuilder("count")
        .reader(ListItemReader(list(range(100_000))))
        .processor(lambda n: time.sleep(0.01) or n)
        .writer(lambda items: None)
        .chunk_size(10)
        .build()
    )
    .build()
)
