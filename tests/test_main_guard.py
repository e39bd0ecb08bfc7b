"""A script that runs partitions on "processes" without the ``__main__`` guard fails its step
with a message that says what to add, instead of a BrokenProcessPool; with the guard it runs.
On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

BODY = """
from batchd import JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.items import ListItemReader


def partition(n, params):
    return [{{"index": i}} for i in range(n)]


def write(items):
    pass


registry = JobRegistry()
registry.register(
    JobBuilder("split")
    .step(
        StepBuilder("work").reader(ListItemReader([1, 2, 3])).writer(write)
        .partitioner(partition, partitions=2).executor("processes").build()
    )
    .build()
)
{start}
"""
START = """
operator = JobOperator(SqlJobRepository({url!r}), registry)
{wait}
print(execution.status.value)
print(execution.exit_message)
operator.shutdown()
"""
WAITS = {
    "start": "execution = operator.start('split', {})",
    "start_async": "execution = operator.wait(operator.start_async('split', {}).id, timeout=60)",
}


def run_script(tmp_path: Path, url: str, *, guarded: bool, wait: str) -> list[str]:
    start = START.format(url=url, wait=WAITS[wait])
    if guarded:
        start = 'if __name__ == "__main__":\n' + textwrap.indent(start, "    ")
    script = tmp_path / "script.py"
    script.write_text(BODY.format(start=start))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("wait", sorted(WAITS))
def test_without_the_guard_the_step_fails_saying_what_to_add(
    database_url: str, tmp_path: Path, wait: str
) -> None:
    lines = run_script(tmp_path, database_url, guarded=False, wait=wait)
    assert lines[0] == "FAILED"
    output = "\n".join(lines)
    assert "UnguardedMainModule" in output
    assert 'Put the code that starts jobs under `if __name__ == "__main__":`' in output
    assert "script.py again, and line" in output
    assert "UnguardedMainModule" in lines[1] and "BrokenProcessPool" not in lines[1]


def test_with_the_guard_the_partitions_run(database_url: str, tmp_path: Path) -> None:
    assert run_script(tmp_path, database_url, guarded=True, wait="start")[0] == "COMPLETED"
