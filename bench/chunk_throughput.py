"""Chunk throughput: a CSV -> upper-case -> CSV chunk step in batchd against a hand-written
loop doing the same work, with the job repository on SQLite and on PostgreSQL.

For each (database, chunk size) it times ``JobOperator.start`` of a one-step job
(CsvItemReader -> processor upper-casing ``name`` -> CsvItemWriter) and a baseline loop
measured in the same run, alternating, ``--repeat`` times each; it reports the medians.

The baseline does what batchd has to do and nothing more:

- reads the file with ``csv.reader`` and upper-cases the ``name`` field of each row;
- writes each chunk (``csv.writer``) to ``.<target>.partial`` beside the target and
  fsyncs it, since CsvItemWriter fsyncs the partial file before every checkpoint
  (``RestartableOutput.checkpoint`` with ``fsync=True``, the default); at the end it fsyncs,
  renames the file onto the target and fsyncs the directory, as ``RestartableOutput.publish``;
- commits ONE transaction per chunk holding one UPDATE of a checkpoint row (counters and a
  JSON position) in the repository's database, through an Engine from
  ``batchd.repository.connect.create_database_engine`` (on SQLite: WAL, synchronous FULL,
  BEGIN IMMEDIATE, as the repository).

It also counts, with a SQLAlchemy ``before_cursor_execute`` listener on the repository's
Engine, the statements batchd runs inside chunk transactions (transaction control left
out), divided by the steps' ``commit_count``: the issue's target is exactly 1. And it checks
that batchd and the baseline wrote byte-identical files.

    .venv/bin/python bench/chunk_throughput.py                 # full run (make bench)
    .venv/bin/python bench/chunk_throughput.py --rows 10000 --repeat 1   # quick
    .venv/bin/python bench/chunk_throughput.py --profile --databases sqlite --chunk-sizes 10
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import io
import itertools
import os
import random
import shutil
import string
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit
from sqlalchemy import Engine

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.items import CsvItemReader, CsvItemWriter
from batchd.repository.connect import create_database_engine

# Targets of the issue: batchd time / baseline time at chunk size 10.
RATIO_TARGETS = {("sqlite", 10): 1.3, ("postgresql", 10): 1.15, ("mariadb", 10): 1.15}
WARMUP_ROWS = 1_000
CITIES = ["Berlin", "Lyon", "Porto", "Kraków", "Washington, D.C.", "Oslo", "Cork", "Turin"]


# ----------------------------------------------------------------------------- input
def generate_csv(path: Path, rows: int, seed: int = 1) -> None:
    """``rows`` records ``id,name,city,amount`` (about 60 bytes a line) under a header.
    Some cities need quoting and one is not ASCII, so the CSV dialect matters."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "name", "city", "amount"])
        for i in range(1, rows + 1):
            suffix = "".join(rng.choices(string.ascii_lowercase, k=22))
            amount = f"{rng.randrange(1, 10_000_000) / 100:.2f}"
            writer.writerow([i, f"customer {i:06d} {suffix}", rng.choice(CITIES), amount])


def generate_inputs(source: Path, warmup: Path, rows: int) -> None:
    """The timed input (``rows`` records) and the warm-up one (WARMUP_ROWS, another seed)."""
    generate_csv(source, rows)
    generate_csv(warmup, WARMUP_ROWS, seed=2)


# ----------------------------------------------------------------------------- batchd
def upper_name(item: dict[str, Any]) -> dict[str, Any]:
    """The processor: upper-case the ``name`` field."""
    item["name"] = item["name"].upper()
    return item


def build_job(name: str, source: Path, out_dir: Path, chunk_size: int) -> Any:
    """A one-step job; its output is ``<out_dir>/batchd_<run>.csv`` (``run`` is the job
    parameter that makes every run a new job instance)."""
    step = (
        StepBuilder("upper")
        .reader(CsvItemReader(source))
        .processor(upper_name)
        .writer(CsvItemWriter(str(out_dir / "batchd_{run}.csv")))
        .chunk_size(chunk_size)
        .build()
    )
    return JobBuilder(name).step(step).build()


@dataclass
class BatchdRunner:
    """Runs the jobs of one database and checks how each run ended."""

    operator: JobOperator
    counter: benchkit.ChunkStatementCounter
    out_dir: Path
    runs: Iterator[int]
    statements: int = 0
    commits: int = 0

    def run(self, job_name: str, expected_items: int) -> Path:
        """Start the job for a new instance; returns its output file."""
        run = next(self.runs)
        self.counter.reset()
        execution = self.operator.start(job_name, {"run": run})
        if execution.status != BatchStatus.COMPLETED:
            raise RuntimeError(
                f"batchd run {run} ended {execution.status}: {execution.exit_message}"
            )
        (step,) = execution.step_executions
        if step.read_count != expected_items or step.write_count != expected_items:
            raise RuntimeError(
                f"batchd run {run}: read {step.read_count}, "
                f"wrote {step.write_count}, expected {expected_items}"
            )
        self.statements += self.counter.count
        self.commits += step.commit_count
        return self.out_dir / f"batchd_{run}.csv"


# ----------------------------------------------------------------------------- baseline
def encode_rows(rows: list[list[str]]) -> bytes:
    """Rows as CSV bytes (the dialect CsvItemWriter writes: ``\\n`` line ends)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_baseline(source: Path, target: Path, engine: Engine, chunk_size: int) -> int:
    """The hand-written loop; returns the number of chunks committed."""
    partial = target.with_name(f".{target.name}.partial")
    read = size = commits = 0
    with open(source, newline="", encoding="utf-8") as infile, open(partial, "wb") as out:
        rows = csv.reader(infile)
        header = next(rows)
        name = header.index("name")
        pending = [header]  # the header goes out with the first chunk
        while chunk := list(itertools.islice(rows, chunk_size)):
            for row in chunk:
                row[name] = row[name].upper()
            pending.extend(chunk)
            data = encode_rows(pending)
            pending = []
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            read, size, commits = read + len(chunk), size + len(data), commits + 1
            with engine.begin() as conn:
                benchkit.save_checkpoint(conn, read, commits, {"line": read + 1, "size": size})
        os.fsync(out.fileno())
    os.replace(partial, target)
    fsync_directory(target.parent)
    return commits


# ----------------------------------------------------------------------------- one database
@dataclass(frozen=True)
class Files:
    """The benchmark's files, all in one temporary directory."""

    tmp: Path

    @property
    def source(self) -> Path:
        return self.tmp / "input.csv"

    @property
    def warmup(self) -> Path:
        return self.tmp / "warmup.csv"

    @property
    def baseline_out(self) -> Path:
        return self.tmp / "baseline.csv"


@dataclass
class CaseResult:
    database: str
    chunk_size: int
    rows: int
    timings: benchkit.Timings
    statements_per_commit: float
    identical: bool


class DatabaseBench:
    """The cases of one database: a repository, an operator and the baseline's Engine."""

    def __init__(self, database: str, url: str, files: Files, args: argparse.Namespace):
        self.database = database
        self.files = files
        self.args = args
        self.repository = SqlJobRepository(url)
        self.registry = JobRegistry()
        self.operator = JobOperator(self.repository, self.registry)
        self.counter = benchkit.ChunkStatementCounter(self.repository.engine)
        self.runner = BatchdRunner(self.operator, self.counter, files.tmp, itertools.count(1))
        self.baseline_engine = create_database_engine(url)
        benchkit.create_checkpoint_row(self.baseline_engine)

    def close(self) -> None:
        self.operator.shutdown()
        self.counter.remove()
        self.baseline_engine.dispose()
        self.repository.dispose()

    def run_baseline(self, source: Path, chunk_size: int) -> int:
        return run_baseline(source, self.files.baseline_out, self.baseline_engine, chunk_size)

    def case(self, chunk_size: int) -> CaseResult:
        """Time one chunk size: a warm-up of each, then alternating runs."""
        rows, files, runner = self.args.rows, self.files, self.runner
        job_name = f"csv_upper_{chunk_size}"
        self.registry.register(build_job(f"{job_name}_warmup", files.warmup, files.tmp, chunk_size))
        self.registry.register(build_job(job_name, files.source, files.tmp, chunk_size))
        runner.run(f"{job_name}_warmup", WARMUP_ROWS).unlink()
        self.run_baseline(files.warmup, chunk_size)
        runner.statements = runner.commits = 0
        outputs: list[Path] = []

        def batchd_run(_round: int) -> None:
            outputs.append(runner.run(job_name, rows))

        def baseline_run(_round: int) -> None:
            assert self.run_baseline(files.source, chunk_size) == -(-rows // chunk_size)

        timings = benchkit.alternate(self.args.repeat, batchd_run, baseline_run)
        # Every baseline run writes the same bytes: compare each batchd output to the last.
        identical = all(filecmp.cmp(p, files.baseline_out, shallow=False) for p in outputs)
        for path in outputs:
            path.unlink()
        if self.args.profile:
            self.profile(job_name, chunk_size)
        return CaseResult(
            self.database,
            chunk_size,
            rows,
            timings,
            runner.statements / runner.commits,
            identical,
        )

    def profile(self, job_name: str, chunk_size: int) -> None:
        """Print the cProfile of one more run of each."""
        where = f"{self.database}, chunk size {chunk_size}"
        print(f"\n=== profile: batchd, {where} ===")
        print(benchkit.profile(lambda: self.runner.run(job_name, self.args.rows).unlink()))
        print(f"\n=== profile: baseline, {where} ===")
        print(benchkit.profile(lambda: self.run_baseline(self.files.source, chunk_size)))


def bench_database(
    database: str, url: str, files: Files, args: argparse.Namespace
) -> list[CaseResult]:
    """Every chunk size on one database."""
    bench = DatabaseBench(database, url, files, args)
    try:
        return [bench.case(size) for size in args.chunk_sizes]
    finally:
        bench.close()


# ----------------------------------------------------------------------------- report
def report(results: list[CaseResult]) -> str:
    headers = [
        "database",
        "chunk",
        "batchd items/s",
        "baseline items/s",
        "ratio",
        "target",
        "repo stmts/commit",
        "same output",
    ]
    rows = []
    for r in results:
        rows.append(
            [
                r.database,
                r.chunk_size,
                f"{r.rows / r.timings.batchd_median:,.0f}",
                f"{r.rows / r.timings.baseline_median:,.0f}",
                f"{r.timings.ratio:.2f}",
                benchkit.verdict(r.timings.ratio, RATIO_TARGETS.get((r.database, r.chunk_size))),
                f"{r.statements_per_commit:g}",
                "yes" if r.identical else "NO",
            ]
        )
    return benchkit.table(headers, rows)


def parse_args() -> argparse.Namespace:
    parser = benchkit.chunk_arguments(
        __doc__.split("\n\n")[0],
        rows_help="lines of input CSV",
        chunk_sizes=[10, 1000],
        databases=["sqlite", "postgresql", "mariadb"],
    )
    parser.add_argument(
        "--tmpdir",
        help="where the files and the SQLite database go "
        "(default: the system's; it must be a real disk for fsync to count)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile one more run of each per case and print it",
    )
    return benchkit.check_chunk_arguments(
        parser, parser.parse_args(), ["sqlite", "postgresql", "mariadb"]
    )


def main() -> None:
    args = parse_args()
    files = Files(Path(tempfile.mkdtemp(prefix="batchd-bench-", dir=args.tmpdir)))
    tmp, source = files.tmp, files.source
    try:
        generate_inputs(source, files.warmup, args.rows)
        print(
            f"# chunk_throughput: {args.rows:,} rows ({source.stat().st_size:,} bytes), "
            f"median of {args.repeat}; {benchkit.machine()}; files in {tmp}"
        )
        results = [
            result
            for per_database in benchkit.on_each_database(
                args.databases,
                tmp,
                "bench_chunk",
                lambda database, url: bench_database(database, url, files, args),
            )
            for result in per_database
        ]
        print(report(results))
        print(benchkit.run_times([(f"{r.database} {r.chunk_size}", r.timings) for r in results]))
        print(f"# load average after the run: {benchkit.load_average()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
