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
from typing import Any

import pytest
from sqlalchemy import create_engine, select, update

from batchd import BatchStatus, JobOperator, SqlJobRepository, StepContext
from batchd.engine import Job
from batchd.engine.operator import process_is_alive
from batchd.items import ListItemReader, SqlItemWriter
from batchd.items.sql_items import dispose_engines
from batchd.repository import Owner
from batchd.repository.tables import job_execution
from tests.daemon.process_tree import alive
from tests.support.jobs import (
    CountingReader,
    JsonLinesLog,
    blocking_tasklet,
    child_registry,
    chunk_job,
    create_output_table,
    create_target_table,
    operator_for,
    output_table,
    target_table,
    tasklet_job,
)
from tests.support.processes import dead_pid

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


def test_an_owner_killed_but_not_yet_reaped_is_dead(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zombie owner (ended, its exit status not yet collected: a worker whose parent died
    with it, until init reaps it) answers signal 0 like a live one; it is dead."""
    monkeypatch.setenv("BATCHD_TEST_ITEMS", "400")
    create_output_table(database_url)
    repo = SqlJobRepository(database_url)
    child, execution_id = start_child(database_url, tmp_path, "slow_sql", items=400)
    wait_for_commits(repo, execution_id, 1)
    child.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(child.pid):  # until it is a zombie: killed, not reaped
        assert time.monotonic() < deadline, "the killed child did not become a zombie"
        time.sleep(0.01)
    operator = JobOperator(repo, child_registry(database_url, tmp_path))
    try:
        recovered = operator.recover(lease=60)
    finally:
        operator.shutdown()
        child.wait()
        repo.dispose()
    assert [e.id for e in recovered] == [execution_id]
    assert "recovered: owner process" in (recovered[0].exit_message or "")


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
    operator = JobOperator(repo, heartbeat=5)
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


def recovered_while_running(
    database_url: str, job: Job, running: threading.Event
) -> tuple[JobOperator, int]:
    """Start ``job`` (of one step, named eod) on an owner, wait until its step is
    ``running``, then recover its execution from another operator whose clock is five
    minutes ahead (the owner is alive but silent past the lease: a long GC pause, a network
    partition). Returns the owner (to be shut down) and the execution id; the test then
    lets the step go on."""
    owner = operator_for(database_url, job, heartbeat=0.2)
    execution = owner.start_async("eod", {"date": "2026-11-21"})
    assert running.wait(10)
    clock = Clock()
    clock.now += timedelta(minutes=5)
    rescuer = operator_for(database_url, clock=clock)
    assert [e.id for e in rescuer.recover(lease=60)] == [execution.id]
    rescuer.shutdown()
    rescuer.repository.dispose()
    return owner, execution.id


def pausing_at(item_number: int, running: threading.Event, resume: threading.Event) -> Any:
    def processor(item: Any) -> Any:
        number = item if isinstance(item, int) else item["id"]
        if number == item_number:
            running.set()
            resume.wait(10)
        return item

    return processor


def test_a_recovered_execution_is_never_overwritten_by_its_late_owner(
    database_url: str, tmp_path: Path
) -> None:
    """The owner's next commit is refused and it gives up."""
    running, resume = threading.Event(), threading.Event()
    job = chunk_job(
        "eod",
        CountingReader(50),
        JsonLinesLog(tmp_path / "out.jsonl"),
        processor=pausing_at(25, running, resume),
    )
    owner, execution_id = recovered_while_running(database_url, job, running)
    resume.set()
    ended = owner.wait(execution_id, timeout=10)
    assert ended.status == BatchStatus.FAILED
    assert "recovered" in (ended.exit_message or "")
    assert ended.step_executions[0].commit_count == 2  # the third chunk was refused
    owner.shutdown()


def test_a_late_owners_refused_chunk_leaves_no_row_of_its_sql_writer(database_url: str) -> None:
    """SqlItemWriter on the repository's database writes in the chunk's transaction: the
    chunk refused to the late owner takes its rows with it."""
    create_target_table(database_url)
    running, resume = threading.Event(), threading.Event()
    items = [{"id": i, "name": f"n{i}", "amount": str(i)} for i in range(1, 51)]
    job = chunk_job(
        "eod",
        ListItemReader(items),
        SqlItemWriter(database_url, target_table()),
        processor=pausing_at(25, running, resume),
    )
    owner, execution_id = recovered_while_running(database_url, job, running)
    resume.set()
    ended = owner.wait(execution_id, timeout=10)
    owner.shutdown()
    dispose_engines()
    assert ended.status == BatchStatus.FAILED
    assert ended.step_executions[0].write_count == 20
    engine = create_engine(database_url)
    with engine.connect() as conn:
        ids = sorted(conn.execute(select(target_table().c.id)).scalars())
    engine.dispose()
    assert ids == list(range(1, 21))


def test_a_late_owner_does_not_end_a_recovered_tasklet_step(database_url: str) -> None:
    """The tasklet returns after its execution was recovered: its step stays FAILED as
    recovery left it, so that a restart runs it again instead of skipping it."""
    running, resume = threading.Event(), threading.Event()
    runs: list[int] = []

    def tasklet(ctx: StepContext) -> None:
        runs.append(1)
        if len(runs) == 1:
            running.set()
            resume.wait(10)

    job = tasklet_job("eod", tasklet, step="work")
    owner, execution_id = recovered_while_running(database_url, job, running)
    resume.set()
    ended = owner.wait(execution_id, timeout=10)
    assert ended.status == BatchStatus.FAILED
    [step_execution] = ended.step_executions
    assert step_execution.status == BatchStatus.FAILED
    assert "recovered" in (step_execution.exit_message or "")
    restarted = owner.restart(execution_id)
    owner.shutdown()
    assert restarted.status == BatchStatus.COMPLETED
    assert len(runs) == 2  # the restart ran the step again


def test_recover_leaves_this_operators_own_running_execution_alone(database_url: str) -> None:
    """Its heartbeat is late (the heartbeat thread was starved), the run is not."""
    running, release = threading.Event(), threading.Event()
    # A 20 s heartbeat: none beats during the test, the aged heartbeat stays aged.
    operator = operator_for(
        database_url, tasklet_job("eod", blocking_tasklet(running, release)), heartbeat=20
    )
    try:
        execution = operator.start_async("eod", {"date": "2026-11-21"})
        assert running.wait(10)
        with operator.repository.engine.begin() as conn:
            conn.execute(
                update(job_execution)
                .where(job_execution.c.id == execution.id)
                .values(heartbeat=datetime.now(UTC) - timedelta(hours=1))
            )
        assert operator.recover(lease=60) == []
        release.set()
        assert operator.wait(execution.id, timeout=10).status == BatchStatus.COMPLETED
    finally:
        release.set()
        operator.shutdown()


def test_a_pid_is_only_checked_on_its_own_host(database_url: str) -> None:
    """A live owner on another host, with a pid that does not exist here, is alive."""
    pid = dead_pid()
    assert not process_is_alive(pid)  # reaped: no process here has it
    repository = SqlJobRepository(database_url)
    execution, _ = repository.create_execution(
        job_name="eod",
        job_key="k",
        identifying_params={"k": "k"},
        params={"k": "k"},
        owner=Owner(host="some-other-host", pid=pid),
        decide=lambda last: None,
    )
    operator = JobOperator(repository, heartbeat=5)
    assert operator.recover(lease=60) == []
    assert repository.require_execution(execution.id).status == BatchStatus.STARTING
    operator.shutdown()
    repository.dispose()


def test_a_stop_during_a_tasklet_is_kept_when_the_run_begins_late(database_url: str) -> None:
    """An execution queued behind a full pool that is stopped before it runs ends STOPPED
    without running a step."""
    release = threading.Event()
    ran: list[str] = []

    def hold(ctx: StepContext) -> None:
        ran.append(str(ctx.params))
        release.wait(10)

    operator = operator_for(database_url, tasklet_job("eod", hold), max_concurrent_jobs=1)
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
