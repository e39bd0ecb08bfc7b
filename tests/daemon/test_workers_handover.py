"""The hand-over of a new execution to its worker process (DESIGN §6), with a real warm
process and real workers in this process's daemon parts: a start reaches its worker in the
starting thread when a pool thread is free to supervise it, and waits for one when
``max_concurrent_jobs`` executions are running."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchd import BatchStatus, SqlJobRepository
from batchd.daemon.config import load_config
from batchd.daemon.workers import ProcessOperator
from batchd.daemon.workers_pool import WorkerPool
from tests.daemon.support import control_config, wait_until


@pytest.fixture
def operator(tmp_path: Path) -> Iterator[ProcessOperator]:
    """A process operator of the worker jobs, ``max_concurrent_jobs = 2``."""
    config = tmp_path / "batchd.toml"
    config.write_text(
        control_config(tmp_path, jobs='["tests.daemon.worker_jobs"]', isolation='"process"')
    )
    settings, registry = load_config(config)
    repository = SqlJobRepository(settings.database_url)
    pool = WorkerPool(config)
    pool.start()
    pool.wait_ready()
    operator = ProcessOperator(
        repository, registry, pool, lambda: settings, max_concurrent_jobs=2, heartbeat=0.5,
        host="test-node",
    )
    try:
        yield operator
    finally:
        operator.shutdown()
        pool.close()
        repository.dispose()


def status(operator: ProcessOperator, execution_id: int) -> BatchStatus:
    execution = operator.repository.get_execution(execution_id)
    assert execution is not None
    return execution.status


def test_a_start_reaches_its_worker_without_waiting_for_a_pool_thread(
    operator: ProcessOperator,
) -> None:
    """Both pool threads are held by something else: the worker still gets its execution
    from the starting thread and runs it to its end (its supervision follows once a pool
    thread is free)."""
    release = threading.Event()
    held = [operator._pool.submit(release.wait) for _ in range(2)]
    try:
        execution = operator.start_async("healthy", {"run": 1, "seconds": 0})
        wait_until(
            lambda: status(operator, execution.id) == BatchStatus.COMPLETED,
            timeout=30,
            what="the execution completed by its worker",
        )
    finally:
        release.set()
    for future in held:
        future.result()


def test_a_start_waits_for_a_pool_thread_while_max_concurrent_jobs_run(
    operator: ProcessOperator,
) -> None:
    running = [
        operator.start_async("healthy", {"run": run, "seconds": 30}) for run in (1, 2)
    ]
    for execution in running:
        wait_until(
            lambda e=execution: status(operator, e.id) == BatchStatus.STARTED,
            timeout=30,
            what="two executions running",
        )
    queued = operator.start_async("healthy", {"run": 3, "seconds": 0})
    # Not handed to a worker: the limit holds it STARTING until a running one ends.
    assert status(operator, queued.id) == BatchStatus.STARTING
    operator.stop(running[0].id)
    wait_until(
        lambda: status(operator, queued.id) == BatchStatus.COMPLETED,
        timeout=30,
        what="the third execution run once the first stopped",
    )
    assert status(operator, running[0].id) == BatchStatus.STOPPED
    operator.stop(running[1].id)
