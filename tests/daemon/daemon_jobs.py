"""Jobs the end-to-end daemon tests configure (``jobs = ["tests.daemon.daemon_jobs"]``).

``count_file`` reads the numbers in a dropped file slowly (so a test can stop it midway)
and records each committed chunk's numbers in the ``seen_numbers`` table in the chunk
transaction of the repository, so a stop/restart shows every number exactly once.
"""

from __future__ import annotations

import datetime as dt
import os
import time

from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, String, Table, insert

import batchd
from batchd import ExecutionContext, JobBuilder, StepBuilder, StepContext
from batchd.model import current_chunk_transaction
from tests.support.jobs import tasklet_job

DELAY = float(os.environ.get("BATCHD_TEST_DELAY", "0.01"))

seen = Table(
    "seen_numbers",
    MetaData(),
    Column("file", String(500), primary_key=True),
    Column("number", Integer, primary_key=True),
)


class FileParams(BaseModel):
    file: str


class NumbersReader:
    """Reads one integer per line of the dropped file; restartable."""

    def open(self, ctx: ExecutionContext) -> None:
        with open(ctx.params.file, encoding="utf-8") as source:
            self.numbers = [int(line) for line in source if line.strip()]
        self.index = ctx.get("NumbersReader.index", 0)
        self.file = ctx.params.file

    def update(self, ctx: ExecutionContext) -> None:
        ctx["NumbersReader.index"] = self.index

    def read(self) -> int | None:
        if self.index >= len(self.numbers):
            return None
        self.index += 1
        time.sleep(DELAY)
        return self.numbers[self.index - 1]


class SeenWriter:
    """Records numbers in the repository's database, in the chunk's transaction."""

    def open(self, ctx: ExecutionContext) -> None:
        self.file = ctx.params.file

    def write(self, numbers: list[int]) -> None:
        transaction = current_chunk_transaction.get()
        assert transaction is not None
        seen.create(transaction.connection, checkfirst=True)
        transaction.connection.execute(
            insert(seen), [{"file": self.file, "number": n} for n in numbers]
        )


class DateParams(BaseModel):
    date: dt.date


def note_date(ctx: StepContext) -> None:
    ctx.step_context["date"] = str(ctx.params.date)


def ignore_stop(ctx: StepContext) -> None:
    """A tasklet that does not look at stop requests (for the second-signal test)."""
    time.sleep(30)


batchd.register(
    JobBuilder("count_file")
    .params_model(FileParams)
    .step(StepBuilder("count").reader(NumbersReader()).writer(SeenWriter()).chunk_size(5).build())
    .build()
)
batchd.register(tasklet_job("dated", note_date, step="note", params_model=DateParams))
batchd.register(tasklet_job("stubborn", ignore_stop, step="sleep", params_model=FileParams))
