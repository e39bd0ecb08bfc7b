"""Jobs for the crash-window tests, and the child process that runs one until a failpoint
kills it: ``BATCHD_FAILPOINTS=NAME=kill python -m tests.support.crash_jobs URL WORKDIR JOB``
prints the execution id as soon as it exists, then runs the job (the test expects SIGKILL).

``files``: ``input.csv`` into ``out.csv`` and the ``target`` table of the repository's
database in one step (the rows in the chunk's transaction), then into ``out.jsonl``.
``partitioned``: ``input.csv`` in four partitions, each into its part file, merged into
``merged.csv`` by a FileAggregator that removes the parts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from batchd import JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.items import (
    CompositeItemWriter,
    CsvItemReader,
    CsvItemWriter,
    FileAggregator,
    FileLinePartitioner,
    JsonLinesItemWriter,
    SqlItemWriter,
)
from tests.support.jobs import target_table

ROWS = 400
OUTPUTS = {
    "files": ("out.csv", "out.jsonl"),
    "partitioned": ("merged.csv",),
    "flagged": ("flagged.csv", "flagged.csv.md5", "flagged.csv.sha512", "flagged.csv.ok"),
}


def crash_registry(url: str, workdir: Path) -> JobRegistry:
    source = workdir / "input.csv"
    registry = JobRegistry()
    registry.register(
        JobBuilder("files")
        .step(
            StepBuilder("load")
            .reader(CsvItemReader(source))
            .writer(
                CompositeItemWriter(
                    CsvItemWriter(workdir / "out.csv"), SqlItemWriter(url, target_table())
                )
            )
            .chunk_size(50)
            .build()
        )
        .step(
            StepBuilder("jsonl")
            .reader(CsvItemReader(source))
            .writer(JsonLinesItemWriter(workdir / "out.jsonl"))
            .chunk_size(50)
            .build()
        )
        .build()
    )
    parts = str(workdir / "part{partition[index]:04d}.csv")
    registry.register(
        JobBuilder("partitioned")
        .step(
            StepBuilder("convert")
            .reader(CsvItemReader(source))
            .writer(CsvItemWriter(parts))
            .chunk_size(25)
            .partitioner(FileLinePartitioner(source), partitions=4)
            .aggregator(FileAggregator(workdir / "merged.csv", parts=parts, header_lines=1))
            .executor("threads")
            .build()
        )
        .build()
    )
    # GoBatch's file output: no header, checksum sidecars, a done flag after the rename.
    registry.register(
        JobBuilder("flagged")
        .step(
            StepBuilder("export")
            .reader(CsvItemReader(source))
            .writer(
                CsvItemWriter(
                    workdir / "flagged.csv",
                    header=False,
                    checksum=["md5", "sha512"],
                    done_flag=True,
                )
            )
            .chunk_size(50)
            .build()
        )
        .build()
    )
    return registry


def run(url: str, workdir: str, job: str) -> None:
    repository = SqlJobRepository(url)
    operator = JobOperator(repository, crash_registry(url, Path(workdir)), heartbeat=0.5)
    execution = operator.start_async(job)
    print(execution.id, flush=True)
    print(operator.wait(execution.id).status.value, flush=True)
    operator.shutdown()


if __name__ == "__main__":
    run(*sys.argv[1:])
