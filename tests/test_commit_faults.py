"""A chunk whose commit fails: the step and the job end FAILED with the database's error."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, create_engine, insert, select

from batchd import BatchStatus, JobOperator, JobRegistry, SqlJobRepository
from batchd.model import current_chunk_transaction
from tests.support.jobs import CountingReader, chunk_job

metadata = MetaData()
parent = Table("fault_parent", metadata, Column("id", Integer, primary_key=True))
# Checked at COMMIT, not at INSERT: a chunk that breaks it fails in the commit itself, after
# the checkpoint's UPDATE succeeded (as a full disk does).
child = Table(
    "fault_child",
    metadata,
    Column("item", Integer, primary_key=True),
    Column(
        "parent_id",
        Integer,
        ForeignKey("fault_parent.id", deferrable=True, initially="DEFERRED"),
        nullable=False,
    ),
)


def write_children(items: list[int]) -> None:
    """Items from 21 on name a parent that does not exist: their chunk cannot commit."""
    chunk = current_chunk_transaction.get()
    assert chunk is not None
    chunk.connection.execute(
        insert(child), [{"item": i, "parent_id": 1 if i <= 20 else 404} for i in items]
    )


def test_a_chunk_whose_commit_fails_ends_the_step_and_job_failed_with_the_error(
    repository: SqlJobRepository,
) -> None:
    metadata.create_all(repository.engine)
    with repository.engine.begin() as conn:
        conn.execute(insert(parent).values(id=1))
    registry = JobRegistry()
    registry.register(chunk_job("load", CountingReader(50), write_children, chunk_size=10))
    operator = JobOperator(repository, registry)
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
    engine: Any = create_engine(repository.url)
    with engine.connect() as conn:
        assert list(conn.execute(select(child.c.item).order_by(child.c.item)).scalars()) == list(
            range(1, 21)
        )
    engine.dispose()
