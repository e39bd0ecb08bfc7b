"""What a run records, and what it costs: an execution as created is the execution as read
back; a step starts only while its execution runs; a two-step run's statements."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from batchd import (
    BatchStatus,
    Decision,
    JobBuilder,
    JobOperator,
    JobRegistry,
    SqlJobRepository,
    StepBuilder,
)
from batchd.errors import ExecutionLost
from batchd.model import JobExecution
from batchd.repository import Owner, StepEnd
from batchd.repository.tables import job_execution, step_execution

OWNER = Owner(host="test-host", pid=4242)
# An aware clock that is not in UTC: the repository stores and gives back UTC.
PLUS_TWO = timezone(timedelta(hours=2))


def create(repository: SqlJobRepository, key: str, params: dict[str, Any]) -> Any:
    return repository.create_execution(
        job_name="job",
        job_key=key,
        identifying_params=params,
        params=params,
        owner=OWNER,
        decide=lambda _last: None,
    )


def test_a_new_execution_is_what_reading_it_gives_back(database_url: str) -> None:
    repository = SqlJobRepository(database_url, clock=lambda: datetime.now(PLUS_TWO))
    try:
        params = {"date": "2026-11-30", "zone": "Zürich", "n": [1, 2.5, None]}
        first, previous = create(repository, "k1", params)
        assert previous is None
        assert first == repository.get_execution(first.id)
        assert first.create_time is not None and first.create_time.tzinfo == UTC
        # The instance's second execution: found, not created, after a failed first one.
        repository.save_job_context(first.id, {"carried": True})
        assert repository.mark_failed(first, "test")
        second, previous = create(repository, "k1", params)
        assert previous is not None and previous.id == first.id
        assert second == repository.get_execution(second.id)
        assert (second.attempt, second.instance_id) == (2, first.instance_id)
        assert repository.load_job_context(second.id) == {"carried": True}
    finally:
        repository.dispose()


def test_a_step_is_not_started_once_its_execution_ended(
    repository: SqlJobRepository,
) -> None:
    execution, _ = create(repository, "k", {"k": 1})
    first = repository.create_step_execution(execution, "one", {"at": 1})
    assert [s.status for s in repository.get_step_executions([first.id])] == [BatchStatus.STARTED]
    assert repository.mark_failed(execution, "recovered elsewhere")
    with pytest.raises(ExecutionLost, match=r"ended elsewhere \(FAILED\)"):
        repository.create_step_execution(execution, "two", {})
    with repository.reading() as conn:
        count = conn.execute(select(func.count()).select_from(step_execution)).scalar_one()
    assert count == 1


def test_a_step_end_and_the_next_start_are_recorded_together_or_not_at_all(
    repository: SqlJobRepository,
) -> None:
    """The next step starts only while the execution runs, and when it cannot, the previous
    step's end, in the same transaction, is not recorded either."""
    execution, _ = create(repository, "k", {"k": 1})
    first = repository.create_step_execution(execution, "one", {})
    # Ended elsewhere without a word to its steps (as an abandon of an older version did).
    with repository.engine.begin() as conn:
        conn.execute(
            update(job_execution).where(job_execution.c.id == execution.id).values(status="FAILED")
        )
    ending = StepEnd(first, BatchStatus.COMPLETED, None, "{}", execution.instance_id, {})
    with pytest.raises(ExecutionLost, match=r"ended elsewhere \(FAILED\)"):
        repository.create_step_execution(execution, "two", {}, ending=ending)
    assert [(s.step_name, s.status) for s in repository.get_step_executions([first.id])] == [
        ("one", BatchStatus.STARTED)
    ]
    assert (first.status, first.end_time, first.version) == (BatchStatus.STARTED, None, 0)
    with repository.reading() as conn:
        count = conn.execute(select(func.count()).select_from(step_execution)).scalar_one()
    assert count == 1


def nothing(_ctx: Any) -> None:
    pass


class Reading:
    """A decider (and, below, job listeners) that looks at the repository, as a report would."""

    def __init__(self, repository: SqlJobRepository) -> None:
        self.repository = repository
        self.seen: list[tuple[BatchStatus, list[tuple[str, BatchStatus]]]] = []

    def look(self, execution: JobExecution) -> None:
        stored = self.repository.require_execution(execution.id)
        self.seen.append((stored.status, [(s.step_name, s.status) for s in stored.step_executions]))

    def decide(self, execution: JobExecution, _last: object) -> str:
        self.look(execution)
        return "GO"


class AfterJob(Reading):
    def after_job(self, execution: JobExecution) -> None:
        self.look(execution)


class BeforeJob(Reading):
    def before_job(self, execution: JobExecution) -> None:
        self.look(execution)


@pytest.mark.parametrize("observer", ["before_job", "after_job", "decision"])
def test_what_ran_before_a_job_listener_or_a_decision_is_in_the_repository(
    repository: SqlJobRepository, observer: str
) -> None:
    """The execution's start and a step's end are recorded with what follows them only when
    no user code runs between."""
    reading = {"before_job": BeforeJob, "after_job": AfterJob}.get(observer, Reading)(repository)
    first = StepBuilder("first").tasklet(nothing).build()
    second = StepBuilder("second").tasklet(nothing).build()
    builder = JobBuilder("observed")
    if observer != "decision":
        builder.step(first).step(second).listener(reading)
    else:
        gate = Decision("gate", reading.decide)
        builder.flow(start=first, transitions={first: {"*": gate}, gate: {"GO": second}})
    registry = JobRegistry()
    registry.register(builder.build())
    operator = JobOperator(repository, registry)
    try:
        execution = operator.start("observed")
    finally:
        operator.shutdown()
    assert execution.status == BatchStatus.COMPLETED
    done, started = BatchStatus.COMPLETED, BatchStatus.STARTED
    assert reading.seen == [
        {
            "before_job": (started, []),
            "after_job": (started, [("first", done), ("second", done)]),
            "decision": (started, [("first", done)]),
        }[observer]
    ]
    history = [(c.step_name, c.status.value) for c in repository.status_history(execution.id)]
    assert history == [
        (None, "STARTING"),
        (None, "STARTED"),
        ("first", "STARTED"),
        ("first", "COMPLETED"),
        ("second", "STARTED"),
        ("second", "COMPLETED"),
        (None, "COMPLETED"),
    ]


def test_a_two_step_run_costs_23_statements_in_4_write_transactions(sqlite_url: str) -> None:
    """Creating the execution; its start with the first step's start; the first step's end
    with the second's start; the second's end with the execution's end: each a transaction
    of its own (crash windows lie between them), of as few statements as can do it."""
    repository = SqlJobRepository(sqlite_url)
    registry = JobRegistry()
    registry.register(
        JobBuilder("two")
        .step(StepBuilder("first").tasklet(nothing).build())
        .step(StepBuilder("second").tasklet(nothing).build())
        .build()
    )
    operator = JobOperator(repository, registry)
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()[:2]).upper())

    try:
        operator.start("two", {"date": "2026-11-29"})  # warm: nothing compiled on the way
        event.listen(repository.engine, "before_cursor_execute", record)
        assert operator.start("two", {"date": "2026-11-30"}).status == BatchStatus.COMPLETED
    finally:
        event.remove(repository.engine, "before_cursor_execute", record)
        operator.shutdown()
        repository.dispose()
    writes = seen.count("BEGIN IMMEDIATE")
    statements = [s for s in seen if not s.startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
    assert (len(statements), writes) == (23, 4), statements


@pytest.mark.parametrize("kind", ["steps", "flow", "decision", "before_job"])
def test_a_stop_requested_elsewhere_before_the_run_began_stops_it_before_its_first_step(
    repository: SqlJobRepository, kind: str
) -> None:
    """Its start finds it STOPPING (another node asked): it began, ran no step and asked no
    decision, STOPPED."""
    release = threading.Event()
    first = StepBuilder("first").tasklet(lambda _ctx: release.wait(10)).build()
    builder = JobBuilder("stoppable")
    reading = Reading(repository)
    if kind == "flow":
        builder.flow(start=first, transitions={})
    elif kind == "decision":
        gate = Decision("gate", reading.decide)
        builder.flow(start=gate, transitions={gate: {"*": first}})
    else:
        builder.step(first)
    if kind == "before_job":
        builder.listener(BeforeJob(repository))
    registry = JobRegistry()
    registry.register(builder.build())
    operator = JobOperator(repository, registry, max_concurrent_jobs=1)
    try:
        busy = operator.start_async("stoppable", {"n": 1})
        queued = operator.start_async("stoppable", {"n": 2})
        assert repository.request_stop(queued.id)  # in the repository only, as a peer does
        release.set()
        assert operator.wait(busy.id, timeout=10).status == BatchStatus.COMPLETED
        stopped = operator.wait(queued.id, timeout=10)
    finally:
        release.set()
        operator.shutdown()
    where = {"flow": "'first'", "decision": "'gate'"}.get(kind, "step 'first'")
    assert (stopped.status, stopped.exit_message) == (
        BatchStatus.STOPPED,
        f"stopped before {where}",
    )
    assert stopped.step_executions == [] and stopped.start_time is not None
    assert len(reading.seen) == (1 if kind == "decision" else 0)  # for the run not stopped
    history = [(c.step_name, c.status.value) for c in repository.status_history(queued.id)]
    assert history == [(None, "STARTING"), (None, "STOPPING"), (None, "STOPPED")]
