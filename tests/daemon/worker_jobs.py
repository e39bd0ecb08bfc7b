"""Jobs of the worker process tests (``tests/daemon/test_workers.py``): each misbehaves the
way a real job can — exits the process, segfaults, eats memory, ignores a stop — and
``healthy`` works for a while beside them, printing and logging as it goes."""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import batchd
from batchd import JobBuilder, StepBuilder, StepContext
from batchd.items import JsonLinesItemWriter, ListItemReader

log = logging.getLogger(__name__)


class Run(BaseModel):
    run: int = 0
    seconds: float = 1.0


def _exits(ctx: StepContext) -> None:
    print("about to exit", flush=True)
    os._exit(3)


def _segfaults(ctx: StepContext) -> None:
    ctypes.string_at(0)


def _eats_memory(ctx: StepContext) -> None:
    blocks = []
    while True:
        blocks.append(bytearray(16 * 2**20))


def _ignores_stops(ctx: StepContext) -> None:
    while True:
        time.sleep(0.05)


def _works(ctx: StepContext) -> None:
    print(f"healthy starts in process {os.getpid()}", flush=True)
    log.info("healthy run %d working for %gs", ctx.params.run, ctx.params.seconds)
    deadline = time.monotonic() + ctx.params.seconds
    while time.monotonic() < deadline:
        ctx.check_stop()
        time.sleep(0.01)
    print("healthy done", flush=True)


def _tasklet_job(name: str, work: Any) -> None:
    batchd.register(
        JobBuilder(name).params_model(Run).step(StepBuilder("work").tasklet(work).build()).build()
    )


_tasklet_job("exits", _exits)
_tasklet_job("segfaults", _segfaults)
_tasklet_job("eats_memory", _eats_memory)
_tasklet_job("ignores_stops", _ignores_stops)
_tasklet_job("healthy", _works)


def _crash_once(item: int) -> dict[str, int]:
    """The first run exits the process at item 25, leaving a marker file that the next
    run sees (its path in the daemon's environment)."""
    marker = Path(os.environ["WORKER_JOBS_CRASH_MARKER"])
    if item == 25 and not marker.exists():
        marker.write_text("crashed")
        os._exit(3)
    return {"n": item}


batchd.register(
    JobBuilder("items")
    .params_model(Run)
    .step(
        StepBuilder("copy")
        .reader(ListItemReader(list(range(60))))
        .processor(_crash_once)
        .writer(JsonLinesItemWriter(os.environ.get("WORKER_JOBS_OUT", "items.jsonl")))
        .chunk_size(10)
        .build()
    )
    .build()
)
