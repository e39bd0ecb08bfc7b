"""Jobs of the end-of-day tests: ``file_import`` and ``posting`` take a business date and
end at once; ``gated`` takes a date and a ``gate`` path, and works until that file exists
(a job as slow as the test wants it, without a timed wait)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from pydantic import BaseModel

import batchd
from batchd import StepContext
from tests.support.jobs import tasklet_job


class DateParams(BaseModel):
    date: dt.date


class GatedParams(BaseModel):
    date: dt.date
    gate: str


def done(ctx: StepContext) -> None:
    pass


def wait_for_gate(ctx: StepContext) -> None:
    while not Path(ctx.params.gate).exists():
        ctx.check_stop()
        time.sleep(0.01)


for name in ("file_import", "posting"):
    batchd.register(tasklet_job(name, done, step="run", params_model=DateParams))
batchd.register(tasklet_job("gated", wait_for_gate, step="work", params_model=GatedParams))
