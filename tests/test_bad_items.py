"""Bad input during a chunk step: a clear error naming the item, committed output intact,
restart possible (issue: chunk processing, bad input)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData, String, create_engine, select

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, StepBuilder
from batchd.items import CsvItemReader, SqlItemWriter
from tests.support.jobs import keyed_table


def test_a_sql_error_names_the_item_keeps_committed_rows_and_restarts(
    database_url: str, operator: JobOperator, registry: JobRegistry, tmp_path: Path
) -> None:
    table = keyed_table("accounts", MetaData(), owner=String(20))
    engine = create_engine(database_url)
    table.metadata.create_all(engine)
    source = tmp_path / "accounts.csv"
    rows = [f"{i},owner-{i}" for i in range(1, 31)]
    rows[16] = "17,"  # an empty owner: NOT NULL refuses it in the third chunk
    source.write_text("id,owner\n" + "\n".join(rows) + "\n")

    def blank_is_null(row: dict[str, str]) -> dict[str, object]:
        return {"id": int(row["id"]), "owner": row["owner"] or None}

    registry.register(
        JobBuilder("load_accounts")
        .step(
            StepBuilder("load")
            .reader(CsvItemReader(source))
            .processor(blank_is_null)
            .writer(SqlItemWriter(database_url, table))
            .chunk_size(7)
            .build()
        )
        .build()
    )
    failed = operator.start("load_accounts", {"file": "accounts.csv"})
    assert failed.status == BatchStatus.FAILED
    message = failed.step_executions[0].exit_message or ""
    assert "IntegrityError" in message and "owner" in message
    assert "17" in message  # the failing row is named in the error's parameters
    with engine.connect() as conn:
        committed = sorted(conn.execute(select(table.c.id)).scalars())
    assert committed == list(range(1, 15))  # the two chunks before the bad one

    rows[16] = "17,owner-17"  # the data is fixed
    source.write_text("id,owner\n" + "\n".join(rows) + "\n")
    restarted = operator.restart(failed.id)
    assert restarted.status == BatchStatus.COMPLETED
    assert restarted.step_executions[0].read_count == 16  # resumed after line 15
    with engine.connect() as conn:
        assert sorted(conn.execute(select(table.c.id)).scalars()) == list(range(1, 31))
    engine.dispose()
