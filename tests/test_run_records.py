"""What a run records, and what it costs: an execution as created is the execution as read
back; a step starts only while its execution runs; a two-step run's statements."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, func, select

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.errors import ExecutionLost
from batchd.repository import Owner
from batchd.repository.tables import step_execution

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


def nothing(_ctx: Any) -> None:
    pass


def test_a_two_step_run_costs_26_statements_in_7_write_transactions(sqlite_url: str) -> None:
    """Creating the execution, its start, each step's start and end, and its end: each a
    transaction of its own (crash windows lie between them), of as few statements as can
    do it."""
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
    assert (len(statements), writes) == (26, 7), statements
