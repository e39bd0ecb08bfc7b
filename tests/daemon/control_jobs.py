"""Jobs the control socket tests configure besides ``tests.daemon.daemon_jobs``
(``jobs = ["tests.daemon.daemon_jobs", "tests.daemon.control_jobs"]``).

``slow_dated`` takes a date and works for ``seconds`` (default 0.3), looking at stop requests
every few milliseconds: long enough to see how many run at once, short enough for a test.
"""

from __future__ import annotations

import datetime as dt
import time

from pydantic import BaseModel

import batchd
from batchd import StepContext
from tests.support.jobs import tasklet_job


class SlowDateParams(BaseModel):
    date: dt.date
    seconds: float = 0.3


def work_a_while(ctx: StepContext) -> None:
    deadline = time.monotonic() + ctx.params.seconds
    while time.monotonic() < deadline:
        ctx.check_stop()
        time.sleep(0.01)


batchd.register(tasklet_job("slow_dated", work_a_while, step="work", params_model=SlowDateParams))
