"""A chunk whose commit fails: the step and the job end FAILED with the database's error."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, insert

from batchd import BatchStatus, JobOperator, SqlJobRepository
from tests.support.jobs import (
    CountingReader,
    chunk_job,
    insert_in_chunk,
    item_table,
    registry_of,
    table_items,
)

metadata = MetaData()
parent = Table("fault_parent", metadata, Column("id", Integer, primary_key=True))
# Checked at COMMIT, not at INSERT: a chunk that breaks it fails in the commit itself, after
# the checkpoint's UPDATE succeeded (as a full disk does).
child = item_table(
    "fault_child",
    metadata,
    Column(
        "parent_id",
        Integer,
        ForeignKey("fault_parent.id", deferrable=True, initially="DEFERRED"),
        nullable=False,
    ),
)


def write_children(items: list[int]) -> None:
    """Items from 21 on name a parent that does not exist: their chunk cannot commit."""
    insert_in_chunk(child, [{"item": i, "parent_id": 1 if i <= 20 else 404} for i in items])


def test_a_chunk_whose_commit_fails_ends_the_step_and_job_failed_with_the_error(
    repository: SqlJobRepository,
) -> None:
    metadata.create_all(repository.engine)
    with repository.engine.begin() as conn:
        conn.execute(insert(parent).values(id=1))
    job = chunk_job("load", CountingReader(50), write_children, chunk_size=10)
    operator = JobOperator(repository, registry_of(job))
    try:
        ended = operator.start("load")
    finally:
        operator.shutdown()
    assert ended.status == BatchStatus.FAILED
    [step] = ended.step_executions
    assert step.status == BatchStatus.FAILED
    assert step.exit_message is not None and step.exit_message.startswith("IntegrityError")
    assert "IntegrityError" in (ended.exit_message or "")
    assert (step.commit_count, step.write_count, step.rollback_count) == (2, 20, 1)
    # What committed before stays; nothing of the failed chunk does.
    assert table_items(repository.url, child) == list(range(1, 21))
