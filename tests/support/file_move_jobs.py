"""Jobs for the file-move tests, and the child process a failpoint kills:
``BATCHD_FAILPOINTS=NAME=kill python -m tests.support.file_move_jobs URL SOURCE_DIR TARGET_DIR
JOB``. ``move`` moves ``SOURCE_DIR/*.csv`` into ``TARGET_DIR/moved``; ``archive`` puts them
into ``TARGET_DIR/archive/{day}.zip`` and removes them."""

from __future__ import annotations

import sys

from batchd import JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.items import allow_input_directory
from batchd.items.file_moves import ArchiveFiles, CopyFiles, MoveFiles


def file_move_registry(source_dir: str, target_dir: str) -> JobRegistry:
    allow_input_directory(source_dir)
    registry = JobRegistry()
    pattern = f"{source_dir}/*.csv"
    for name, tasklet in [
        ("move", MoveFiles(pattern, f"{target_dir}/moved")),
        ("copy", CopyFiles(pattern, f"{target_dir}/copied")),
        ("archive", ArchiveFiles(pattern, f"{target_dir}/archive/{{day}}.zip", remove=True)),
    ]:
        registry.register(JobBuilder(name).step(StepBuilder(name).tasklet(tasklet).build()).build())
    return registry


def run(url: str, source_dir: str, target_dir: str, job: str) -> None:
    repository = SqlJobRepository(url)
    operator = JobOperator(repository, file_move_registry(source_dir, target_dir), heartbeat=0.5)
    print(operator.start(job, {"day": "d1"}).status.value, flush=True)
    operator.shutdown()


if __name__ == "__main__":
    run(*sys.argv[1:])
