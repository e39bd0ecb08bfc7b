"""Crash recovery: heartbeats, recover(lease), and restart after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from batchd import (
    BatchStatus,
    JobBuilder,
    JobOperator,
    JobRegistry,
    SqlJobRepository,
    StepBuilder,
    StepContext,
)
from batchd.repository import Owner
from tests.support.jobs import (
    CountingReader,
    JsonLinesLog,
    child_registry,
    create_output_table,
    output_table,
)

ROOT = Path(__file__).resolve().parent.parent


def start_child(url: str, workdir: Path, job: str, items: int) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "BATCHD_TEST_ITEMS": str(items), "BATCHD_TEST_DELAY": "0.002"}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.child",
            "run",
            url,
            str(workdir),
            job,
            '{"date": "2026-11-21"}',
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    return child, int(child.stdout.readline())


def wait_for_commits(repo: SqlJobRepository, execution_id: int, commits: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        steps = repo.require_execution(execution_id).step_executions
        if steps and steps[0].commit_count >= commits:
            return
        time.sleep(0.01)
    raise AssertionError(f"execution {execution_id} did not reach {commits} commits")


def test_sigkill_mid_chunk_then_recover_and_restart_processes_nothing_twice(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHD_TEST_ITEMS", "400")  # the restart here runs the same job
    create_output_table(database_url)
    repo = SqlJobRepository(database_url)
    child, execution_id = start_child(database_url, tmp_path, "slow_sql", items=400)
    wait_for_commits(repo, execution_id, 5)
    child.send_signal(signal.SIGKILL)
    child.wait()  # reaped: the pid is gone, not a zombie
    killed = repo.require_execution(execution_id)
    assert killed.status == BatchStatus.STARTED
    committed = killed.step_executions[0].write_count

    operator = JobOperator(repo, child_registry(database_url, tmp_path))
    recovered = operator.recover(lease=60)
    assert [e.id for e in recovered] == [execution_id]
    assert recovered[0].status == BatchStatus.FAILED
    assert "recovered: owner process" in (recovered[0].exit_message or "")
    assert recovered[0].step_executions[0].status == BatchStatus.FAILED
    assert operator.recover(lease=60) == []  # once is enough

    restarted = operator.restart("slow_sql")
    operator.shutdown()
    assert restarted.status == BatchStatus.COMPLETED
    assert restarted.instance_id == killed.instance_id
    # The restart read only what was not committed before the kill.
    assert restarted.step_executions[0].read_count == 400 - committed
    engine = create_engine(database_url)
    with engine.connect() as conn:
        items = list(conn.execute(select(output_table().c.item)).scalars())
    engine.dispose()
    repo.dispose()
    assert sorted(items) == list(range(1, 401))


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def test_lease_decides_for_owners_on_other_hosts(database_url: str) -> None:
    clock = Clock()
    repo = SqlJobRepository(database_url, clock=clock)
    for key, host in (("a", "node-a"), ("b", "node-b")):
        repo.create_execution(
            job_name="eod",
            job_key=key,
            identifying_params={"k": key},
            params={"k": key},
            owner=Owner(host=host, pid=1),
            decide=lambda last: None,
        )
    operator = JobOperator(repo, JobRegistry(), heartbeat=5)
    clock.now += timedelta(seconds=50)
    repo.heartbeat([2])  # node-b is alive and beating
    clock.now += timedelta(seconds=20)
    assert [e.id for e in operator.recover(lease=60)] == [1]
    failed = repo.require_execution(1)
    assert failed.status == BatchStatus.FAILED
    assert "no heartbeat from node-a:1" in (failed.exit_message or "")
    assert repo.require_execution(2).status == BatchStatus.STARTING
    with pytest.raises(ValueError, match="at least three heartbeats"):
        operator.recover(lease=10)
    operator.shutdown()
    repo.dispose()


def test_a_recovered_execution_is_never_overwritten_by_its_late_owner(
    database_url: str, tmp_path: Path
) -> None:
    """The owner is alive but silent past the lease (a long GC pause, a partition):
    another operator recovers it; the owner's next commit is refused and it gives up."""
    in_chunk, resume = threading.Event(), threading.Event()
    log = JsonLinesLog(tmp_path / "out.jsonl")

    def processor(item: int) -> int:
        if item == 25:
            in_chunk.set()
            resume.wait(10)
        return item

    registry = JobRegistry()
    registry.register(
        JobBuilder("eod")
        .step(
            StepBuilder("load")
            .reader(CountingReader(50))
            .processor(processor)
            .writer(log)
            .chunk_size(10)
            .build()
        )
        .build()
    )
    owner = JobOperator(SqlJobRepository(database_url), registry, heartbeat=0.2)
    execution = owner.start_async("eod", {"date": "2026-11-21"})
    assert in_chunk.wait(10)
    clock = Clock()
    clock.now += timedelta(minutes=5)
    rescuer = JobOperator(SqlJobRepository(database_url, clock=clock), JobRegistry())
    assert [e.id for e in rescuer.recover(lease=60)] == [execution.id]
    resume.set()
    ended = owner.wait(execution.id, timeout=10)
    assert ended.status == BatchStatus.FAILED
    assert "recovered" in (ended.exit_message or "")
    assert ended.step_executions[0].commit_count == 2  # the third chunk was refused
    owner.shutdown()
    rescuer.shutdown()


def test_a_stop_during_a_tasklet_is_kept_when_the_run_begins_late(database_url: str) -> None:
    """An execution queued behind a full pool that is stopped before it runs ends STOPPED
    without running a step."""
    release = threading.Event()
    ran: list[str] = []

    def hold(ctx: StepContext) -> None:
        ran.append(str(ctx.params))
        release.wait(10)

    registry = JobRegistry()
    registry.register(JobBuilder("eod").step(StepBuilder("s").tasklet(hold).build()).build())
    operator = JobOperator(SqlJobRepository(database_url), registry, max_concurrent_jobs=1)
    first = operator.start_async("eod", {"date": "1"})
    queued = operator.start_async("eod", {"date": "2"})
    assert [e.id for e in operator.stop(queued.id)] == [queued.id]
    release.set()
    assert operator.wait(first.id, timeout=10).status == BatchStatus.COMPLETED
    stopped = operator.wait(queued.id, timeout=10)
    assert stopped.status == BatchStatus.STOPPED
    assert stopped.step_executions == []
    assert len(ran) == 1
    operator.shutdown()
