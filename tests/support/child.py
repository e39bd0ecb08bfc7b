"""Child processes for crash and race tests.

``python -m tests.support.child run URL WORKDIR JOB PARAMS`` starts a job and prints the
execution id as soon as it exists, then runs it to the end (or until it is killed).
"""

from __future__ import annotations

import sys
from pathlib import Path

from batchd import JobOperator, SqlJobRepository
from tests.support.jobs import child_registry, file_jobs


def run(url: str, workdir: str, job: str, params: str) -> None:
    repository = SqlJobRepository(url)
    registry = child_registry(url, Path(workdir))
    for file_job in file_jobs(url, Path(workdir)).jobs():
        registry.register(file_job)
    operator = JobOperator(repository, registry, heartbeat=0.5)
    execution = operator.start_async(job, params)
    print(execution.id, flush=True)
    final = operator.wait(execution.id)
    print(final.status.value, flush=True)
    operator.shutdown()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "run":
        run(*args)
    else:
        raise SystemExit(f"unknown command {command!r}")
