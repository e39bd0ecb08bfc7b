"""File moves as steps (GoBatch's FileMove/CopyFile, and archives): each file whole at its
destination; a process killed between the copy and the delete (or the archive and the
removal) is repaired by recover() and a restart, with nothing lost or duplicated. On SQLite
and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchd import BatchStatus, JobOperator, JobRegistry, SqlJobRepository
from batchd.items.file_moves import archive_members
from tests.support.file_move_jobs import file_move_registry

ROOT = Path(__file__).resolve().parent.parent
FILES = {f"f{i}.csv": f"id\n{i}\n" * (i + 1) for i in range(3)}


@pytest.fixture
def source_dir() -> Iterator[Path]:
    """Input files on another file system than the test's tmp_path when there is one
    (/dev/shm), so a move there is a copy and a delete."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base) as directory:
        path = Path(directory)
        for name, text in FILES.items():
            (path / name).write_text(text)
        yield path


def run_job(url: str, source: Path, target: Path, job: str) -> BatchStatus:
    repository = SqlJobRepository(url)
    operator = JobOperator(repository, file_move_registry(str(source), str(target)))
    try:
        newest = repository.newest_execution_of_job(job)
        if newest is None:
            return operator.start(job, {"day": "d1"}).status
        operator.recover(lease=60)
        return operator.restart(job).status
    finally:
        operator.shutdown()
        repository.dispose()


def contents(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize(
    ("window", "job"),
    [
        ("files.after_copy_before_delete", "move"),
        ("files.after_archive_before_remove", "archive"),
    ],
)
def test_a_kill_between_the_two_acts_then_a_restart_loses_and_duplicates_nothing(
    database_url: str, source_dir: Path, tmp_path: Path, window: str, job: str
) -> None:
    SqlJobRepository(database_url).dispose()
    args = [database_url, str(source_dir), str(tmp_path), job]
    child = subprocess.run(
        [sys.executable, "-m", "tests.support.file_move_jobs", *args],
        cwd=ROOT,
        env={**os.environ, "BATCHD_FAILPOINTS": f"{window}=kill"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert run_job(database_url, source_dir, tmp_path, job) == BatchStatus.COMPLETED
    assert list(source_dir.iterdir()) == []
    if job == "move":
        assert contents(tmp_path / "moved") == FILES  # no partial file left either
    else:
        members = archive_members(str(tmp_path / "archive" / "d1.zip"))
        assert sorted(members) == sorted(FILES)
        assert [p.name for p in (tmp_path / "archive").iterdir()] == ["d1.zip"]


def test_copy_then_move_then_archive_merging_an_earlier_archive(
    operator: JobOperator, registry: JobRegistry, source_dir: Path, tmp_path: Path
) -> None:
    for job in file_move_registry(str(source_dir), str(tmp_path)).jobs():
        registry.register(job)
    copied = operator.start("copy", {"day": "d1"})
    assert copied.status == BatchStatus.COMPLETED
    assert copied.step_executions[0].write_count == 3
    assert contents(tmp_path / "copied") == FILES == contents(source_dir)

    # A destination with other content is refused, not overwritten.
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "f1.csv").write_text("someone else's\n")
    refused = operator.start("move", {"day": "d1"})
    assert refused.status == BatchStatus.FAILED
    assert "f1.csv exists with other content" in (refused.exit_message or "")
    assert sorted(p.name for p in source_dir.iterdir()) == ["f1.csv", "f2.csv"]
    (tmp_path / "moved" / "f1.csv").unlink()
    assert operator.restart("move").status == BatchStatus.COMPLETED
    assert contents(tmp_path / "moved") == FILES and list(source_dir.iterdir()) == []

    (source_dir / "a.csv").write_text("first\n")
    assert operator.start("archive", {"day": "d1", "run": 1}).status == BatchStatus.COMPLETED
    (source_dir / "b.csv").write_text("second\n")
    assert operator.start("archive", {"day": "d1", "run": 2}).status == BatchStatus.COMPLETED
    # The second run kept what the first archived (a restart after a partial removal too).
    assert sorted(archive_members(str(tmp_path / "archive" / "d1.zip"))) == ["a.csv", "b.csv"]
    assert list(source_dir.iterdir()) == []
