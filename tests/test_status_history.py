"""The history of every status change of an execution and its steps (go-job's state
history), with time and node, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.repository import Owner
from tests.support.jobs import blocking_tasklet, tasklet_job


def changes(repository: SqlJobRepository, execution_id: int) -> list[tuple[str | None, str]]:
    return [(c.step_name, c.status.value) for c in repository.status_history(execution_id)]


def test_every_transition_of_a_run_and_its_steps_is_recorded_with_time_and_node(
    repository: SqlJobRepository, registry: JobRegistry
) -> None:
    failing = {"now": True}

    def post(ctx: object) -> None:
        if failing["now"]:
            raise RuntimeError("ledger locked")

    registry.register(
        JobBuilder("eod")
        .step(StepBuilder("load").tasklet(lambda ctx: None).build())
        .step(StepBuilder("post").tasklet(post).build())
        .build()
    )
    operator = JobOperator(repository, registry, heartbeat=0.2, host="node-a")
    try:
        failed = operator.start("eod", {"day": 1})
        history = repository.status_history(failed.id)
        assert changes(repository, failed.id) == [
            (None, "STARTING"),
            (None, "STARTED"),
            ("load", "STARTED"),
            ("load", "COMPLETED"),
            ("post", "STARTED"),
            ("post", "FAILED"),
            (None, "FAILED"),
        ]
        assert {c.node for c in history} == {"node-a"}
        assert [c.time for c in history] == sorted(c.time for c in history)
        assert history[-1].message == "step 'post' FAILED: RuntimeError: ledger locked"
        assert operator.abandon(failed.id).status == BatchStatus.ABANDONED
        assert changes(repository, failed.id)[-1] == (None, "ABANDONED")
    finally:
        operator.shutdown()


def test_a_stop_and_a_recovery_are_in_the_history(
    repository: SqlJobRepository, registry: JobRegistry
) -> None:
    started, release = threading.Event(), threading.Event()
    registry.register(tasklet_job("slow", blocking_tasklet(started, release), step="wait"))
    operator = JobOperator(repository, registry, heartbeat=0.2)
    try:
        execution = operator.start_async("slow", {})
        assert started.wait(30)
        operator.stop("slow")  # the tasklet sees it and stops (it is never released)
        operator.wait(execution.id, timeout=30)
        assert changes(repository, execution.id) == [
            (None, "STARTING"),
            (None, "STARTED"),
            ("wait", "STARTED"),
            (None, "STOPPING"),
            ("wait", "STOPPED"),
            (None, "STOPPED"),
        ]
    finally:
        operator.shutdown()

    # An execution whose owner is gone: recover() fails it and its running step.
    ghost = Owner(host="elsewhere", pid=1)
    orphan, _ = repository.create_execution(
        job_name="slow",
        job_key="k",
        identifying_params={"orphan": True},
        params={"orphan": True},
        owner=ghost,
        decide=lambda last: None,
    )
    repository.mark_started(orphan)
    repository.create_step_execution(orphan, "wait", {})
    recoverer = JobOperator(repository, registry, heartbeat=0.2)
    try:
        repository.clock = lambda: orphan.heartbeat + timedelta(hours=1)  # type: ignore[operator]
        assert [e.id for e in recoverer.recover(lease=60)] == [orphan.id]
    finally:
        recoverer.shutdown()
    assert changes(repository, orphan.id)[-2:] == [(None, "FAILED"), ("wait", "FAILED")]
    assert repository.status_history(orphan.id)[-1].message.startswith("recovered: no heartbeat")


def test_purge_deletes_the_history_with_its_executions(
    operator: JobOperator, registry: JobRegistry
) -> None:
    registry.register(tasklet_job("once", lambda c: None))
    done = operator.start("once", {})
    repository = operator.repository
    assert len(repository.status_history(done.id)) == 5
    assert done.end_time is not None
    assert repository.purge(done.end_time + timedelta(seconds=1)).executions == 1
    assert repository.status_history(done.id) == []
