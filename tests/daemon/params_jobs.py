"""Jobs of the parameter tests against the real daemon (tests/daemon/test_params_daemon.py).

``echo`` has no params model: its parameters are stored as they come. ``read_rows`` reads the
CSV file its ``file`` parameter names through the template ``"{file}"``, as the example
``file_import`` job does for the watch that fires it.
"""

from __future__ import annotations

from typing import Any

import batchd
from batchd import JobBuilder, StepBuilder, StepContext
from batchd.items import CsvItemReader, ItemWriter


def nothing(ctx: StepContext) -> None:
    """The tests look at what the repository recorded, not at what the job did."""


class Discard(ItemWriter):
    def write(self, items: list[Any]) -> None:
        pass


batchd.register(JobBuilder("echo").step(StepBuilder("nothing").tasklet(nothing).build()).build())
batchd.register(
    JobBuilder("read_rows")
    .step(StepBuilder("read").reader(CsvItemReader("{file}")).writer(Discard()).build())
    .build()
)
