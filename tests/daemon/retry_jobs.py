"""Jobs of the daemon's retry tests (``jobs = ["tests.daemon.retry_jobs"]``).

``flaky`` fails while the counter file ``params.counter`` holds a number above 0 (each run
takes one off); ``doomed`` fails with an error it marks permanent; ``report`` has an
incrementer and ends with the exit status NOOP."""

from __future__ import annotations

from pathlib import Path

import batchd
from batchd import JobBuilder, StepBuilder, StepContext


class LedgerLocked(Exception):
    pass


class WrongBank(Exception):
    pass


def flaky(ctx: StepContext) -> None:
    counter = Path(ctx.params["counter"])
    left = int(counter.read_text())
    if left > 0:
        counter.write_text(str(left - 1))
        raise LedgerLocked(f"{left} more failure(s) to go")


def doomed(ctx: StepContext) -> None:
    raise WrongBank("the file is for another bank")


batchd.register(JobBuilder("flaky").step(StepBuilder("post").tasklet(flaky).build()).build())
batchd.register(
    JobBuilder("doomed")
    .step(StepBuilder("check").tasklet(doomed).build())
    .permanent_errors(WrongBank)
    .build()
)


def nothing_to_report(ctx: StepContext) -> None:
    ctx.exit_status = "NOOP"


batchd.register(
    JobBuilder("report")
    .step(StepBuilder("report").tasklet(nothing_to_report).build())
    .incrementer()
    .build()
)
