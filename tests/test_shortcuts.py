"""The GoBatch-style module functions on the default operator."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import batchd
from batchd import BatchStatus, JobBuilder, StepBuilder
from tests.support.jobs import blocking_tasklet


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[batchd.JobOperator]:
    operator = batchd.configure(f"sqlite:///{tmp_path / 'shortcuts.db'}", max_concurrent_jobs=2)
    yield operator
    operator.shutdown()
    operator.repository.dispose()


def test_register_start_stop_restart(configured: batchd.JobOperator) -> None:
    started, release = threading.Event(), threading.Event()
    batchd.register(
        JobBuilder("shortcut_job")
        .step(StepBuilder("wait").tasklet(blocking_tasklet(started, release)).build())
        .build()
    )
    execution = batchd.start_async("shortcut_job", '{"date": "2026-11-21"}')
    assert batchd.default_operator() is configured
    assert started.wait(10)
    assert [e.id for e in batchd.stop("shortcut_job")] == [execution.id]
    assert configured.wait(execution.id, timeout=10).status == BatchStatus.STOPPED
    release.set()
    restarted = batchd.restart("shortcut_job")
    assert restarted.status == BatchStatus.COMPLETED
    assert restarted.instance_id == execution.instance_id
    again = batchd.start("shortcut_job", {"date": "2026-11-22"})
    assert again.status == BatchStatus.COMPLETED
    assert configured.repository.url.database.endswith("shortcuts.db")
