"""The job repository: schema, migrations, database guarantees, SQLite settings."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, insert, inspect, select, update
from sqlalchemy.exc import IntegrityError

from batchd import BatchStatus, SqlJobRepository
from batchd.errors import JobExecutionAlreadyRunning, RepositoryError
from batchd.model import RUNNING_STATUSES
from batchd.repository import Owner, migrate
from batchd.repository.tables import job_execution, metadata

OWNER = Owner(host="test", pid=1)


def create(repo: SqlJobRepository, key: str = "k1") -> Any:
    execution, _ = repo.create_execution(
        job_name="eod",
        job_key=key,
        identifying_params={"key": key},
        params={"key": key},
        owner=OWNER,
        decide=lambda last: None,
    )
    return execution


def test_migration_creates_the_schema_the_code_uses(repository: SqlJobRepository) -> None:
    with repository.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": migrate.VERSION_TABLE})
        assert context.get_current_revision() == migrate.head_revision()
        assert compare_metadata(context, metadata) == []


def test_every_foreign_key_and_name_status_are_indexed(repository: SqlJobRepository) -> None:
    inspector = inspect(repository.engine)
    for table in metadata.sorted_tables:
        indexed = {tuple(ix["column_names"]) for ix in inspector.get_indexes(table.name)}
        primary = tuple(inspector.get_pk_constraint(table.name)["constrained_columns"])
        for fk in inspector.get_foreign_keys(table.name):
            columns = tuple(fk["constrained_columns"])
            assert columns in indexed or primary[: len(columns)] == columns, (table.name, columns)
    execution_indexes = {
        tuple(ix["column_names"]) for ix in inspector.get_indexes("batch_job_execution")
    }
    assert ("job_name", "status") in execution_indexes
    uniques = inspector.get_unique_constraints("batch_job_instance")
    assert [u["column_names"] for u in uniques] == [["job_name", "job_key"]]


@pytest.mark.parametrize("status", sorted(s.value for s in RUNNING_STATUSES))
def test_the_database_refuses_a_second_running_execution(
    repository: SqlJobRepository, status: str
) -> None:
    """Whichever running status the first execution is in (STOPPING included: it still
    runs until its owner notices), a second running one is refused."""
    first = create(repository)
    with repository.engine.begin() as conn:
        conn.execute(
            update(job_execution).where(job_execution.c.id == first.id).values(status=status)
        )
    now = first.create_time
    row = {
        "instance_id": first.instance_id,
        "job_name": "eod",
        "params": "{}",
        "create_time": now,
        "last_updated": now,
        "version": 0,
    }
    # Straight SQL, bypassing every check in Python: the partial unique index decides.
    with pytest.raises(IntegrityError), repository.engine.begin() as conn:
        conn.execute(insert(job_execution).values(status=status, **row))
    with repository.engine.begin() as conn:
        conn.execute(insert(job_execution).values(status="FAILED", **row))
    with pytest.raises(JobExecutionAlreadyRunning):
        create(repository)


def test_same_instance_is_found_not_duplicated(repository: SqlJobRepository) -> None:
    first = create(repository, "k1")
    repository.mark_failed(repository.require_execution(first.id), "test")
    second = create(repository, "k1")
    assert second.instance_id == first.instance_id
    assert create(repository, "k2").instance_id != first.instance_id


def test_repository_reopens_an_existing_schema_without_changes(database_url: str) -> None:
    SqlJobRepository(database_url).dispose()
    again = SqlJobRepository(database_url)
    with again.engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
    again.dispose()


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url: str) -> None:
    repo = SqlJobRepository(sqlite_url)
    with repo.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    repo.dispose()


def _create_many(url: str, worker: int, count: int) -> None:
    repo = SqlJobRepository(url)
    for i in range(count):
        execution = create(repo, f"w{worker}-{i}")
        repo.mark_started(execution)
        repo.finish_execution(execution, BatchStatus.COMPLETED, None, {})
    repo.dispose()


def test_sqlite_works_from_several_processes(sqlite_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_create_many, args=(sqlite_url, w, 40)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    repo = SqlJobRepository(sqlite_url)
    with repo.engine.connect() as conn:
        statuses = conn.execute(
            select(job_execution.c.status, func.count()).group_by(job_execution.c.status)
        ).all()
    repo.dispose()
    assert statuses == [("COMPLETED", 120)]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "cannot parse database URL"),
        ("oracle://u@h/db", "unsupported database 'oracle'"),
        ("mysql://u@nowhere.invalid/db", "cannot open database mysql[+]pymysql://"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:////nonexistent-dir/sub/batchd.db", "cannot open database"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/none", "cannot open database"),
    ],
)
def test_a_database_that_cannot_be_opened_is_a_clear_error(url: str, message: str) -> None:
    with pytest.raises(RepositoryError, match=message):
        SqlJobRepository(url)


def _race(url: str, trials: int, barrier: Any, results: Any) -> None:
    """Start the same instance as the other process, trial after trial."""
    repo = SqlJobRepository(url)
    outcomes = []
    for trial in range(trials):
        barrier.wait()
        try:
            create(repo, f"race-{trial}")
            outcomes.append("won")
        except JobExecutionAlreadyRunning:
            outcomes.append("refused")
    repo.dispose()
    results.put(outcomes)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgresql", marks=pytest.mark.postgres),
        "sqlite",
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_two_processes_racing_one_instance_exactly_one_wins(
    backend: str, request: pytest.FixtureRequest
) -> None:
    fixture = {"postgresql": "pg_url", "sqlite": "sqlite_url", "mariadb": "mariadb_url"}[backend]
    url = request.getfixturevalue(fixture)
    SqlJobRepository(url).dispose()
    trials = 200
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    racers = [ctx.Process(target=_race, args=(url, trials, barrier, results)) for _ in range(2)]
    for racer in racers:
        racer.start()
    first, second = results.get(timeout=120), results.get(timeout=120)
    for racer in racers:
        racer.join(30)
    assert len(first) == len(second) == trials
    winners = [(a == "won") + (b == "won") for a, b in zip(first, second, strict=True)]
    assert winners == [1] * trials
    # Both processes won some trials: they really raced.
    assert 0 < first.count("won") < trials or backend == "sqlite"


def test_batchd_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "BATCHD_DATABASE_URL": url}
    first = subprocess.run(
        [sys.executable, "-m", "batchd.cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "upgraded from nothing to revision" in first.stdout
    again = subprocess.run(
        [sys.executable, "-m", "batchd.cli", "db", "upgrade", "--database-url", url],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "already at revision" in again.stdout
    engine = create_engine(url)
    assert "batch_job_execution" in inspect(engine).get_table_names()
    engine.dispose()
    bad = subprocess.run(
        [sys.executable, "-m", "batchd.cli", "db", "upgrade", "--database-url", "oracle://x/y"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 78  # EX_CONFIG, as `batchd run` (see tests/test_cli_db.py)
    assert "unsupported database 'oracle'" in bad.stderr
