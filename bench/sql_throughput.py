"""SQL throughput: a table -> table chunk step in batchd (SqlItemReader -> SqlItemWriter) on
PostgreSQL and on MariaDB against a hand-written keyset loop with the same commits, in the
same run.

The source and target tables live in the job repository's database, so SqlItemWriter joins
the chunk transaction: the rows of a chunk and its checkpoint commit together. The reader's
page size is the chunk size, so each chunk costs one page query on both sides.

The baseline, per chunk, in ONE transaction through an Engine from
``batchd.repository.connect.create_database_engine``:
``SELECT ... WHERE id > :last ORDER BY id LIMIT :n`` (keyset), one executemany INSERT of the
page into the target, one UPDATE of a checkpoint row (counters and the last key as JSON),
COMMIT. The target is truncated before every run (untimed) and checked against the source
after every run.

    .venv/bin/python bench/sql_throughput.py                  # full run
    .venv/bin/python bench/sql_throughput.py --rows 20000 --repeat 1   # quick
    .venv/bin/python bench/sql_throughput.py --profile --chunk-sizes 1000
    .venv/bin/python bench/sql_throughput.py --databases mariadb
"""

from __future__ import annotations

import argparse
import itertools
import random
from dataclasses import dataclass
from decimal import Decimal

import benchkit
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    text,
    tuple_,
)

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.items import SqlItemReader, SqlItemWriter
from batchd.items.sql_items import dispose_engines
from batchd.repository.connect import create_database_engine

# Target of the issue: batchd time / baseline time.
RATIO_TARGET = 1.2
FILL_BATCH = 10_000
CITIES = ["Berlin", "Lyon", "Porto", "Kraków", "Washington, D.C.", "Oslo", "Cork", "Turin"]

metadata = MetaData()


def _columns() -> list[Column[object]]:
    return [
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("name", String(60), nullable=False),
        Column("city", String(40), nullable=False),
        Column("amount", Numeric(12, 2), nullable=False),
    ]


source = Table("bench_source", metadata, *_columns())
target = Table("bench_target", metadata, *_columns())

PAGE = (
    select(source)
    .where(source.c.id > bindparam("last"))
    .order_by(source.c.id)
    .limit(bindparam("n"))
)


# ----------------------------------------------------------------------------- tables
def create_tables(engine: Engine, rows: int, seed: int = 1) -> None:
    """(Re)create source and target; fill the source with ``rows`` rows, ids 1..rows."""
    rng = random.Random(seed)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        for first in range(1, rows + 1, FILL_BATCH):
            batch = [
                {
                    "id": i,
                    "name": f"customer {i:06d} "
                    + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=22)),
                    "city": rng.choice(CITIES),
                    "amount": Decimal(rng.randrange(1, 10_000_000)) / 100,
                }
                for i in range(first, min(first + FILL_BATCH, rows + 1))
            ]
            conn.execute(insert(source), batch)
        # Fresh statistics for the planner: ANALYZE (PostgreSQL), ANALYZE TABLE (MariaDB).
        table_word = " TABLE" if conn.dialect.name in ("mysql", "mariadb") else ""
        conn.execute(text(f"ANALYZE{table_word} bench_source"))


def truncate_target(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE bench_target"))


def check_target(engine: Engine, rows: int) -> None:
    """The target holds exactly the source's rows, or raise: as many rows, and each row of
    the source equal in the target (a LEFT JOIN: MySQL has no FULL OUTER JOIN)."""
    s, t = source.alias("s"), target.alias("t")
    differing = (
        select(func.count())
        .select_from(s.outerjoin(t, s.c.id == t.c.id))
        .where(
            tuple_(s.c.id, s.c.name, s.c.city, s.c.amount).is_distinct_from(
                tuple_(t.c.id, t.c.name, t.c.city, t.c.amount)
            )
        )
    )
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(target)).scalar_one()
        bad = conn.execute(differing).scalar_one()
    if count != rows or bad:
        raise RuntimeError(f"target has {count} rows ({bad} differ from the source)")


# ----------------------------------------------------------------------------- batchd
def build_job(name: str, url: str, chunk_size: int) -> object:
    """SqlItemReader (page size = chunk size) -> SqlItemWriter on the repository's URL."""
    step = (
        StepBuilder("copy")
        .reader(SqlItemReader(url, source, key="id", page_size=chunk_size))
        .writer(SqlItemWriter(url, target))
        .chunk_size(chunk_size)
        .build()
    )
    return JobBuilder(name).step(step).build()


@dataclass
class BatchdRunner:
    """Runs the jobs and checks how each run ended; counts statements in chunk commits."""

    operator: JobOperator
    all_statements: benchkit.ChunkStatementCounter
    repository_statements: benchkit.ChunkStatementCounter
    runs: itertools.count[int]
    statements: int = 0
    repository: int = 0
    commits: int = 0

    def run(self, job_name: str, rows: int) -> None:
        run = next(self.runs)
        self.all_statements.reset()
        self.repository_statements.reset()
        execution = self.operator.start(job_name, {"run": run})
        if execution.status != BatchStatus.COMPLETED:
            raise RuntimeError(f"run {run} ended {execution.status}: {execution.exit_message}")
        (step,) = execution.step_executions
        if step.read_count != rows or step.write_count != rows:
            raise RuntimeError(f"run {run}: read {step.read_count}, wrote {step.write_count}")
        self.statements += self.all_statements.count
        self.repository += self.repository_statements.count
        self.commits += step.commit_count


# ----------------------------------------------------------------------------- baseline
def run_baseline(engine: Engine, chunk_size: int) -> int:
    """The hand-written keyset loop; returns the number of chunks committed."""
    last, copied, commits = 0, 0, 0
    while True:
        with engine.begin() as conn:
            rows = [row._asdict() for row in conn.execute(PAGE, {"last": last, "n": chunk_size})]
            if not rows:
                return commits
            conn.execute(insert(target), rows)
            last, copied, commits = rows[-1]["id"], copied + len(rows), commits + 1
            benchkit.save_checkpoint(conn, copied, commits, {"last_key": last})


# ----------------------------------------------------------------------------- cases
@dataclass
class CaseResult:
    database: str
    chunk_size: int
    rows: int
    timings: benchkit.Timings
    statements_per_commit: float
    repository_per_commit: float


def bench_case(
    database: str,
    chunk_size: int,
    url: str,
    runner: BatchdRunner,
    registry: JobRegistry,
    baseline_engine: Engine,
    args: argparse.Namespace,
) -> CaseResult:
    """Time one chunk size: a warm-up of each, then alternating runs."""
    job_name = f"copy_{database}_{chunk_size}"
    registry.register(build_job(job_name, url, chunk_size))

    def batchd_run(_round: int) -> None:
        runner.run(job_name, args.rows)

    def baseline_run(_round: int) -> None:
        assert run_baseline(baseline_engine, chunk_size) == -(-args.rows // chunk_size)

    for warm_up in (batchd_run, baseline_run):  # untimed: caches, prepared statements
        truncate_target(baseline_engine)
        warm_up(-1)
    runner.statements = runner.repository = runner.commits = 0
    timings = benchkit.alternate(
        args.repeat,
        batchd_run,
        baseline_run,
        before_each=lambda: truncate_target(baseline_engine),
        after_each=lambda: check_target(baseline_engine, args.rows),
    )
    if args.profile:
        for label, fn in (("batchd", batchd_run), ("baseline", baseline_run)):
            truncate_target(baseline_engine)
            print(f"\n=== profile: {label}, {database}, chunk size {chunk_size} ===")
            print(benchkit.profile(lambda fn=fn: fn(-1)))
    return CaseResult(
        database,
        chunk_size,
        args.rows,
        timings,
        runner.statements / runner.commits,
        runner.repository / runner.commits,
    )


# ----------------------------------------------------------------------------- report
def report(results: list[CaseResult]) -> str:
    headers = [
        "database",
        "chunk",
        "batchd items/s",
        "baseline items/s",
        "ratio",
        "target",
        "stmts/commit",
        "repo stmts/commit",
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
                benchkit.verdict(r.timings.ratio, RATIO_TARGET),
                f"{r.statements_per_commit:g}",
                f"{r.repository_per_commit:g}",
            ]
        )
    return benchkit.table(headers, rows)


def parse_args() -> argparse.Namespace:
    parser = benchkit.chunk_arguments(
        __doc__.split("\n\n")[0],
        rows_help="rows in the source table",
        chunk_sizes=[1000, 100],
        databases=["postgresql", "mariadb"],
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile one more run of each per chunk size and print it",
    )
    return benchkit.check_chunk_arguments(parser, parser.parse_args(), ["postgresql", "mariadb"])


def bench_database(database: str, args: argparse.Namespace) -> list[CaseResult]:
    """Every chunk size on a server of ``database`` started here."""
    with benchkit.database_server(database) as server:
        url = server.create_database("bench_sql")
        baseline_engine = create_database_engine(url)
        create_tables(baseline_engine, args.rows)
        benchkit.create_checkpoint_row(baseline_engine)
        repository = SqlJobRepository(url)
        registry = JobRegistry()
        operator = JobOperator(repository, registry)
        runner = BatchdRunner(
            operator,
            benchkit.ChunkStatementCounter(repository.engine),
            benchkit.ChunkStatementCounter(repository.engine, matching="batch_step_execution"),
            itertools.count(1),
        )
        try:
            return [
                bench_case(database, size, url, runner, registry, baseline_engine, args)
                for size in args.chunk_sizes
            ]
        finally:
            operator.shutdown()
            dispose_engines()
            repository.dispose()
            baseline_engine.dispose()


def main() -> None:
    args = parse_args()
    print(
        f"# sql_throughput: {args.rows:,} rows, {', '.join(args.databases)} "
        f"(fsync off / log flushed once a second), median of {args.repeat}; {benchkit.machine()}"
    )
    results = [r for database in args.databases for r in bench_database(database, args)]
    print(report(results))
    print(benchkit.run_times([(f"{r.database} {r.chunk_size}", r.timings) for r in results]))
    print(f"# load average after the run: {benchkit.load_average()}")


if __name__ == "__main__":
    main()
