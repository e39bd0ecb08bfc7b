"""Every crash window of the engine: a real process SIGKILLed there (by its failpoint), then
recover() and a restart complete the job with every item once and byte-identical files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from batchd import BatchStatus, JobOperator, SqlJobRepository
from batchd.items.sql_items import dispose_engines
from tests.support.crash_jobs import OUTPUTS, ROWS, crash_registry
from tests.support.jobs import create_target_table, target_table, write_input_csv

ROOT = Path(__file__).resolve().parent.parent

# Each window, and the job whose run reaches it.
WINDOWS = [
    ("engine.before_chunk_commit", "files"),
    ("engine.after_chunk_commit", "files"),
    ("engine.after_output_rename", "files"),
    ("engine.after_step_end", "files"),
    ("engine.after_partition_plan", "partitioned"),
    ("engine.after_partitions_created", "partitioned"),
    ("engine.after_output_rename", "partitioned"),  # a partition's part file published
    ("engine.after_partitions_ended", "partitioned"),
    ("aggregator.after_merge_rename", "partitioned"),
    ("aggregator.during_part_removal", "partitioned"),
    ("engine.after_aggregate", "partitioned"),
    ("items.after_publish_before_flag", "flagged"),
    ("engine.after_output_rename", "flagged"),  # the flag written, the step's end not
]


def prepare(url: str, workdir: Path) -> None:
    write_input_csv(workdir / "input.csv", ROWS)
    create_target_table(url)
    SqlJobRepository(url).dispose()


def run_through(url: str, workdir: Path, job: str) -> BatchStatus:
    repository = SqlJobRepository(url)
    operator = JobOperator(repository, crash_registry(url, workdir))
    try:
        newest = repository.newest_execution_of_job(job)
        if newest is None:
            return operator.start(job).status
        assert [e.id for e in operator.recover(lease=60)] == [newest.id]
        return operator.restart(job).status
    finally:
        operator.shutdown()
        repository.dispose()
        dispose_engines()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The output files of each job run once without a crash."""
    files: dict[str, bytes] = {}
    for job, names in OUTPUTS.items():
        workdir = tmp_path_factory.mktemp(f"reference-{job}")
        url = f"sqlite:///{workdir / 'reference.db'}"
        prepare(url, workdir)
        assert run_through(url, workdir, job) == BatchStatus.COMPLETED
        files |= {name: (workdir / name).read_bytes() for name in names}
    return files


@pytest.mark.parametrize(("window", "job"), WINDOWS, ids=[f"{w}-{j}" for w, j in WINDOWS])
def test_a_kill_in_the_window_then_recover_and_restart_completes_every_item_once(
    database_url: str, tmp_path: Path, reference: dict[str, bytes], window: str, job: str
) -> None:
    prepare(database_url, tmp_path)
    child = subprocess.run(
        [sys.executable, "-m", "tests.support.crash_jobs", database_url, str(tmp_path), job],
        cwd=ROOT,
        env={**os.environ, "BATCHD_FAILPOINTS": f"{window}=kill"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr  # it died in the window

    assert run_through(database_url, tmp_path, job) == BatchStatus.COMPLETED
    for name in OUTPUTS[job]:
        assert (tmp_path / name).read_bytes() == reference[name], name
    # No partial file, part file or removal marker is left behind.
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("batchd.db"))
    assert left == sorted(["input.csv", *OUTPUTS[job]])
    if job == "files":
        engine = create_engine(database_url)
        with engine.connect() as conn:
            ids = list(conn.execute(select(target_table().c.id).order_by("id")).scalars())
        engine.dispose()
        assert ids == list(range(1, ROWS + 1))
