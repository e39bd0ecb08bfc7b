"""Exactly-once output under SIGKILL at random moments (DESIGN §3, chunk processing)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from batchd import BatchStatus, JobOperator, SqlJobRepository
from tests.support.jobs import create_target_table, file_jobs, target_table, write_input_csv

ROOT = Path(__file__).resolve().parent.parent
ROWS = 10_000


def run_child_and_kill(url: str, workdir: Path, job: str, kill_after: float) -> int:
    """Start ``job`` in a child process and SIGKILL it ``kill_after`` seconds after its
    execution exists (or let it finish if it is faster). Returns the execution id."""
    env = {**os.environ, "BATCHD_TEST_DELAY": "0.00005"}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.support.child", "run", url, str(workdir), job, "{}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    execution_id = int(child.stdout.readline())
    time.sleep(kill_after)
    child.send_signal(signal.SIGKILL)
    child.wait()
    return execution_id


def finish(url: str, workdir: Path, job: str) -> BatchStatus:
    """What an operator does after a crash: recover, then restart if it did not complete."""
    repository = SqlJobRepository(url)
    operator = JobOperator(repository, file_jobs(url, workdir))
    operator.recover(lease=60)
    newest = operator.list_executions(job, limit=1)[0]
    if newest.status != BatchStatus.COMPLETED:
        newest = operator.restart(job)
    operator.shutdown()
    repository.dispose()
    return newest.status


@pytest.mark.slow
def test_sql_output_is_exactly_once_after_20_random_kills(
    database_url: str, tmp_path: Path
) -> None:
    write_input_csv(tmp_path / "input.csv", ROWS)
    create_target_table(database_url)
    SqlJobRepository(database_url).dispose()
    rng = random.Random(20261121)
    engine = create_engine(database_url)
    table = target_table()
    killed_mid_run = 0
    for trial in range(20):
        with engine.begin() as conn:
            conn.execute(table.delete())
        # Each trial is its own instance of the job, so give it fresh history.
        run_child_and_kill(database_url, tmp_path, "csv_to_sql", rng.uniform(0.0, 0.8))
        with engine.connect() as conn:
            before = conn.execute(select(func.count()).select_from(table)).scalar_one()
        killed_mid_run += before < ROWS
        assert finish(database_url, tmp_path, "csv_to_sql") == BatchStatus.COMPLETED
        with engine.connect() as conn:
            ids = list(conn.execute(select(table.c.id).order_by(table.c.id)).scalars())
        assert ids == list(range(1, ROWS + 1)), f"trial {trial}"
        # Next trial: forget the completed instance so the same job can run again.
        _forget_history(database_url)
    engine.dispose()
    assert killed_mid_run >= 10  # most kills really landed mid-run


def _forget_history(url: str) -> None:
    from batchd.repository.tables import metadata

    engine = create_engine(url)
    with engine.begin() as conn:
        for repo_table in reversed(metadata.sorted_tables):
            conn.execute(repo_table.delete())
    engine.dispose()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_file_output_after_a_kill_equals_an_uninterrupted_run(
    sqlite_url: str, tmp_path: Path, seed: int
) -> None:
    reference = tmp_path / "reference"
    crashed = tmp_path / "crashed"
    for workdir in (reference, crashed):
        workdir.mkdir()
        write_input_csv(workdir / "input.csv", ROWS)
    reference_url = f"sqlite:///{reference / 'batchd.db'}"
    repository = SqlJobRepository(reference_url)
    operator = JobOperator(repository, file_jobs(reference_url, reference))
    assert operator.start("csv_to_files", {}).status == BatchStatus.COMPLETED
    operator.shutdown()
    repository.dispose()

    crashed_url = f"sqlite:///{crashed / 'batchd.db'}"
    SqlJobRepository(crashed_url).dispose()
    kill_after = random.Random(seed).uniform(0.1, 0.6)
    execution_id = run_child_and_kill(crashed_url, crashed, "csv_to_files", kill_after)
    repository = SqlJobRepository(crashed_url)
    assert repository.require_execution(execution_id).status == BatchStatus.STARTED  # mid-run
    repository.dispose()
    assert finish(crashed_url, crashed, "csv_to_files") == BatchStatus.COMPLETED
    for name in ("out.csv", "out.jsonl", "out.txt"):
        assert (crashed / name).read_bytes() == (reference / name).read_bytes(), name
    leftovers = sorted(p.name for p in crashed.iterdir() if p.name.startswith("."))
    assert leftovers == []  # no temporary file is left behind
