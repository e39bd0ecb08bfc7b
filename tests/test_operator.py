"""JobOperator semantics (DESIGN §3), on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from batchd import (
    BatchStatus,
    JobBuilder,
    JobOperator,
    JobRegistry,
    SqlJobRepository,
    StepBuilder,
    StepContext,
)
from batchd.errors import (
    InvalidJobParameters,
    JobExecutionAlreadyRunning,
    JobInstanceAlreadyComplete,
    JobRestartError,
    NoSuchJob,
    NoSuchJobExecution,
    StartLimitExceeded,
)
from batchd.repository.tables import job_execution, job_instance, step_execution
from tests.support.jobs import (
    CountingReader,
    JsonLinesLog,
    blocking_tasklet,
    chunk_job,
    tasklet_job,
)

DAY = {"date": "2026-11-21"}


def table_counts(repository: SqlJobRepository) -> tuple[int, int, int]:
    with repository.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (job_instance, job_execution, step_execution)
        )


class Flaky:
    """A tasklet that fails while ``failing`` is true and records every call."""

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0

    def __call__(self, ctx: StepContext) -> None:
        self.calls += 1
        if self.failing:
            raise RuntimeError("ledger is locked")


def two_step_job(registry: JobRegistry, first: Any, second: Any, **kwargs: Any) -> None:
    step2 = StepBuilder("post").tasklet(second)
    if kwargs.get("allow"):
        step2 = step2.allow_start_if_complete(True)
    first_step = StepBuilder("prepare").tasklet(first)
    if kwargs.get("allow_first"):
        first_step = first_step.allow_start_if_complete(True)
    registry.register(JobBuilder("eod").step(first_step.build()).step(step2.build()).build())


def test_same_params_in_another_order_is_the_same_instance(
    operator: JobOperator, registry: JobRegistry
) -> None:
    flaky = Flaky()
    registry.register(tasklet_job("eod", flaky))
    first = operator.start("eod", {"date": "2026-11-21", "region": "eu"})
    assert first.status == BatchStatus.FAILED
    second = operator.start("eod", '{"region": "eu", "date": "2026-11-21"}')
    assert second.instance_id == first.instance_id
    other_day = operator.start("eod", {"date": "2026-11-22", "region": "eu"})
    assert other_day.instance_id != first.instance_id


def test_start_of_a_completed_instance_is_refused_and_writes_nothing(
    operator: JobOperator, registry: JobRegistry, repository: SqlJobRepository
) -> None:
    registry.register(tasklet_job("eod", lambda ctx: None))
    done = operator.start("eod", DAY)
    assert done.status == BatchStatus.COMPLETED
    before = table_counts(repository)
    with pytest.raises(JobInstanceAlreadyComplete, match="already COMPLETED"):
        operator.start("eod", {"date": "2026-11-21"})
    assert table_counts(repository) == before


def test_failed_instance_started_again_is_a_restart_skipping_completed_steps(
    operator: JobOperator, registry: JobRegistry
) -> None:
    prepare_calls: list[int] = []
    flaky = Flaky()
    two_step_job(registry, lambda ctx: prepare_calls.append(1), flaky)
    failed = operator.start("eod", DAY)
    assert failed.status == BatchStatus.FAILED
    assert "ledger is locked" in (failed.exit_message or "")
    assert [s.status for s in failed.step_executions] == [
        BatchStatus.COMPLETED,
        BatchStatus.FAILED,
    ]
    flaky.failing = False
    again = operator.start("eod", DAY)
    assert again.status == BatchStatus.COMPLETED
    assert again.instance_id == failed.instance_id
    assert [s.step_name for s in again.step_executions] == ["post"]  # prepare was skipped
    assert len(prepare_calls) == 1


def test_allow_start_if_complete_reruns_a_completed_step(
    operator: JobOperator, registry: JobRegistry
) -> None:
    prepare_calls: list[int] = []
    flaky = Flaky()
    two_step_job(registry, lambda ctx: prepare_calls.append(1), flaky, allow_first=True)
    operator.start("eod", DAY)
    flaky.failing = False
    again = operator.restart("eod")
    assert again.status == BatchStatus.COMPLETED
    assert [s.step_name for s in again.step_executions] == ["prepare", "post"]
    assert len(prepare_calls) == 2


@pytest.mark.parametrize("by", ["name", "id", "id_as_string"])
def test_restart_reuses_the_instance(
    operator: JobOperator, registry: JobRegistry, repository: SqlJobRepository, by: str
) -> None:
    flaky = Flaky()
    registry.register(tasklet_job("eod", flaky))
    failed = operator.start("eod", DAY)
    # A second, newer instance of the same job that failed too: restart by id must still
    # pick the instance of the given execution (GoBatch's restart-by-id bug).
    other = operator.start("eod", {"date": "2026-11-22"})
    flaky.failing = False
    target: Any = {"name": "eod", "id": failed.id, "id_as_string": str(failed.id)}[by]
    restarted = operator.restart(target)
    assert restarted.status == BatchStatus.COMPLETED
    expected_instance = other.instance_id if by == "name" else failed.instance_id
    assert restarted.instance_id == expected_instance
    assert restarted.params == ({"date": "2026-11-22"} if by == "name" else DAY)
    instances = {e.instance_id for e in repository.list_executions(limit=100)}
    assert len(instances) == 2  # no instance was created by the restart


def test_restart_of_completed_or_abandoned_instance_is_refused(
    operator: JobOperator, registry: JobRegistry, repository: SqlJobRepository
) -> None:
    flaky = Flaky()
    registry.register(tasklet_job("eod", flaky))
    failed = operator.start("eod", DAY)
    abandoned = operator.abandon(failed.id)
    assert abandoned.status == BatchStatus.ABANDONED
    before = table_counts(repository)
    with pytest.raises(JobRestartError, match="ABANDONED"):
        operator.restart(failed.id)
    with pytest.raises(JobInstanceAlreadyComplete, match="ABANDONED"):
        operator.start("eod", DAY)
    flaky.failing = False
    done = operator.start("eod", {"date": "2026-11-22"})
    with pytest.raises(JobRestartError, match="COMPLETED"):
        operator.restart(done.id)
    assert table_counts(repository)[1] == before[1] + 1


def test_not_restartable_job_is_refused(operator: JobOperator, registry: JobRegistry) -> None:
    registry.register(
        JobBuilder("once")
        .step(StepBuilder("s").tasklet(Flaky()).build())
        .restartable(False)
        .build()
    )
    operator.start("once", DAY)
    with pytest.raises(JobRestartError, match="not restartable"):
        operator.restart("once")


def test_start_limit(operator: JobOperator, registry: JobRegistry) -> None:
    flaky = Flaky()
    registry.register(
        JobBuilder("eod").step(StepBuilder("s").tasklet(flaky).start_limit(2).build()).build()
    )
    assert operator.start("eod", DAY).status == BatchStatus.FAILED
    assert operator.restart("eod").status == BatchStatus.FAILED
    with pytest.raises(StartLimitExceeded, match=r"started 2 times \(start_limit 2\)"):
        operator.restart("eod")
    assert flaky.calls == 2


def test_stop_of_a_running_tasklet_ends_stopped_and_restart_completes(
    operator: JobOperator, registry: JobRegistry
) -> None:
    started, release = threading.Event(), threading.Event()
    after: list[str] = []
    two_step_job(registry, blocking_tasklet(started, release), lambda ctx: after.append("ran"))
    execution = operator.start_async("eod", DAY)
    assert execution.status == BatchStatus.STARTING
    assert started.wait(10)
    asked = operator.stop("eod")
    assert [e.id for e in asked] == [execution.id]
    assert asked[0].status == BatchStatus.STOPPING
    stopped = operator.wait(execution.id, timeout=10)
    assert stopped.status == BatchStatus.STOPPED
    assert stopped.step_executions[0].status == BatchStatus.STOPPED
    assert after == []  # the step after the stopped one did not run
    assert operator.stop(execution.id) == []  # stopping an ended execution is no error
    release.set()
    restarted = operator.restart(execution.id)
    assert restarted.status == BatchStatus.COMPLETED
    assert after == ["ran"]


def test_a_tasklet_that_returns_after_a_stop_completes_and_the_job_stops_before_the_next_step(
    operator: JobOperator, registry: JobRegistry
) -> None:
    started, release = threading.Event(), threading.Event()

    def ignores_stop(ctx: StepContext) -> None:
        started.set()
        while not ctx.stop_requested:
            release.wait(0.01)

    two_step_job(registry, ignores_stop, lambda ctx: None)
    execution = operator.start_async("eod", DAY)
    assert started.wait(10)
    operator.stop(execution.id)
    ended = operator.wait(execution.id, timeout=10)
    assert ended.status == BatchStatus.STOPPED
    assert [(s.step_name, s.status) for s in ended.step_executions] == [
        ("prepare", BatchStatus.COMPLETED)
    ]


def test_stop_made_by_another_operator_is_seen_within_a_heartbeat(
    operator: JobOperator, registry: JobRegistry, repository: SqlJobRepository
) -> None:
    started, release = threading.Event(), threading.Event()
    two_step_job(registry, blocking_tasklet(started, release), lambda ctx: None)
    execution = operator.start_async("eod", DAY)
    assert started.wait(10)
    elsewhere = JobOperator(SqlJobRepository(repository.url), JobRegistry())
    try:
        assert [e.id for e in elsewhere.stop(execution.id)] == [execution.id]
    finally:
        elsewhere.shutdown()
        elsewhere.repository.dispose()
    assert operator.wait(execution.id, timeout=10).status == BatchStatus.STOPPED


def test_concurrent_start_of_one_instance_is_refused(
    operator: JobOperator, registry: JobRegistry
) -> None:
    started, release = threading.Event(), threading.Event()
    registry.register(tasklet_job("eod", blocking_tasklet(started, release)))
    running = operator.start_async("eod", DAY)
    with pytest.raises(JobExecutionAlreadyRunning, match="already running"):
        operator.start("eod", DAY)
    with pytest.raises(JobExecutionAlreadyRunning):
        operator.start_async("eod", DAY)
    release.set()
    assert operator.wait(running.id, timeout=10).status == BatchStatus.COMPLETED


def test_abandon_rules(operator: JobOperator, registry: JobRegistry) -> None:
    started, release = threading.Event(), threading.Event()
    registry.register(tasklet_job("eod", blocking_tasklet(started, release)))
    running = operator.start_async("eod", DAY)
    assert started.wait(10)
    with pytest.raises(JobExecutionAlreadyRunning, match="stop it first"):
        operator.abandon(running.id)
    release.set()
    done = operator.wait(running.id, timeout=10)
    with pytest.raises(JobInstanceAlreadyComplete):
        operator.abandon(done.id)
    with pytest.raises(NoSuchJobExecution, match="12345"):
        operator.abandon(12345)


def test_bad_requests_raise_specific_errors_and_write_nothing(
    operator: JobOperator, registry: JobRegistry, repository: SqlJobRepository
) -> None:
    from pydantic import BaseModel

    class Params(BaseModel):
        date: str

    registry.register(tasklet_job("eod", lambda ctx: None, params_model=Params))
    before = table_counts(repository)
    with pytest.raises(NoSuchJob, match="'nope'"):
        operator.start("nope", DAY)
    with pytest.raises(InvalidJobParameters, match="date: Field required"):
        operator.start("eod", {"day": "2026-11-21"})
    with pytest.raises(InvalidJobParameters, match="not valid JSON"):
        operator.start("eod", "{date")
    with pytest.raises(NoSuchJobExecution, match="999"):
        operator.get_execution(999)
    with pytest.raises(NoSuchJobExecution):
        operator.restart(999)
    with pytest.raises(NoSuchJob):
        operator.restart("nope")
    with pytest.raises(NoSuchJob):
        operator.stop("nope")
    assert table_counts(repository) == before


def test_listeners_see_job_and_step_hooks(operator: JobOperator, registry: JobRegistry) -> None:
    calls: list[str] = []

    class Recorder:
        def before_job(self, execution: Any) -> None:
            calls.append(f"before_job {execution.status.value}")

        def after_job(self, execution: Any) -> None:
            calls.append(f"after_job {execution.status.value}")

        def before_step(self, step: Any) -> None:
            calls.append(f"before_step {step.step_name}")

        def after_step(self, step: Any) -> None:
            calls.append(f"after_step {step.step_name} {step.status.value}")

    registry.register(
        JobBuilder("eod")
        .listener(Recorder())
        .step(StepBuilder("a").tasklet(lambda ctx: None).build())
        .step(StepBuilder("b").tasklet(lambda ctx: None).build())
        .build()
    )
    operator.start("eod", DAY)
    assert calls == [
        "before_job STARTED",
        "before_step a",
        "after_step a COMPLETED",
        "before_step b",
        "after_step b COMPLETED",
        "after_job COMPLETED",
    ]


def test_a_failing_listener_fails_its_step_with_its_message(
    operator: JobOperator, registry: JobRegistry
) -> None:
    class Broken:
        def before_step(self, step: Any) -> None:
            raise ValueError("audit table missing")

    registry.register(
        JobBuilder("eod")
        .step(StepBuilder("a").tasklet(lambda ctx: None).listener(Broken()).build())
        .build()
    )
    execution = operator.start("eod", DAY)
    assert execution.status == BatchStatus.FAILED
    assert "audit table missing" in (execution.step_executions[0].exit_message or "")


def test_contexts_persist_as_documented(operator: JobOperator, registry: JobRegistry) -> None:
    seen: list[tuple[Any, ...]] = []
    flaky = Flaky()

    def first(ctx: StepContext) -> None:
        ctx.job_context["prepared"] = ctx.job_context.get("prepared", 0) + 1
        ctx.step_context["runs"] = ctx.step_context.get("runs", 0) + 1
        ctx.execution_context["progress"] = ctx.execution_context.get("progress", 0) + 10

    def second(ctx: StepContext) -> None:
        seen.append((dict(ctx.job_context), ctx.params))
        flaky(ctx)

    two_step_job(registry, first, second, allow_first=True)
    failed = operator.start("eod", DAY)
    flaky.failing = False
    operator.restart(failed.id)
    # job_context is restored from the previous execution; params are the instance's.
    assert seen == [({"prepared": 1}, DAY), ({"prepared": 2}, DAY)]
    last = operator.list_executions("eod", limit=1)[0]
    prepare = last.step_executions[0]
    assert prepare.execution_context == {"progress": 10}  # a completed step re-runs afresh


def test_list_executions_newest_first_with_filters(
    operator: JobOperator, registry: JobRegistry
) -> None:
    registry.register(tasklet_job("eod", Flaky()))
    ids = [operator.start("eod", {"date": f"2026-11-{day:02d}"}).id for day in (1, 2, 3)]
    assert [e.id for e in operator.list_executions()] == ids[::-1]
    assert [e.id for e in operator.list_executions("eod", BatchStatus.FAILED, limit=2)] == ids[
        :0:-1
    ]
    assert operator.list_executions(status="COMPLETED") == []


def test_chunk_restart_resumes_after_the_last_commit_and_writes_each_item_once(
    operator: JobOperator, registry: JobRegistry, tmp_path: Path
) -> None:
    log = JsonLinesLog(tmp_path / "out.jsonl")
    failing_at = {"item": 37}

    def processor(item: int) -> int | None:
        if item == failing_at["item"]:
            raise ValueError(f"bad item {item}")
        return None if item % 10 == 0 else item * 2

    registry.register(
        chunk_job("count", CountingReader(95), log, chunk_size=10, processor=processor)
    )
    failed = operator.start("count", DAY)
    assert failed.status == BatchStatus.FAILED
    step = failed.step_executions[0]
    assert (step.commit_count, step.write_count, step.filter_count, step.rollback_count) == (
        3,
        27,
        3,
        1,
    )
    assert step.execution_context == {"CountingReader.next": 31}
    failing_at["item"] = -1
    restarted = operator.restart("count")
    assert restarted.status == BatchStatus.COMPLETED
    step = restarted.step_executions[0]
    # Counters count this execution only: items 31..95.
    assert (step.read_count, step.write_count, step.filter_count, step.commit_count) == (
        65,
        59,
        6,
        7,
    )
    written = log.items()
    assert written == [i * 2 for i in range(1, 96) if i % 10]


def test_async_starts_are_bounded_by_max_concurrent_jobs(
    repository: SqlJobRepository, registry: JobRegistry
) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()

    def tasklet(ctx: StepContext) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1

    registry.register(tasklet_job("eod", tasklet))
    with JobOperator(repository, registry, max_concurrent_jobs=2, heartbeat=0.2) as operator:
        executions = [operator.start_async("eod", {"date": f"d{i}"}) for i in range(5)]
        deadline = time.monotonic() + 10
        while running < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        statuses = [operator.get_execution(e.id).status for e in executions]
        assert statuses.count(BatchStatus.STARTING) == 3  # queued behind the two running
        release.set()
        ended = [operator.wait(e.id, timeout=10) for e in executions]
    assert {e.status for e in ended} == {BatchStatus.COMPLETED}
    assert peak == 2


def test_wait_times_out(operator: JobOperator, registry: JobRegistry) -> None:
    started, release = threading.Event(), threading.Event()
    registry.register(tasklet_job("eod", blocking_tasklet(started, release)))
    execution = operator.start_async("eod", DAY)
    with pytest.raises(TimeoutError):
        operator.wait(execution.id, timeout=0.1)
    release.set()
    assert operator.wait(execution.id, timeout=10).status == BatchStatus.COMPLETED


def test_start_async_returns_the_execution_as_created(
    operator: JobOperator, registry: JobRegistry
) -> None:
    registry.register(tasklet_job("quick", lambda ctx: None))
    for day in range(1, 21):
        execution = operator.start_async("quick", {"date": f"2026-11-{day:02d}"})
        operator.wait(execution.id, timeout=10)
        # Even once the run has ended, the returned record still says what start_async saw.
        assert execution.status == BatchStatus.STARTING
        assert execution.step_executions == []
