"""File import: a CSV file into a database table, batchd against the hand-written floor and
the tools its users would pick instead (pandas, petl), all in the same run.

For each database (SQLite, PostgreSQL) the same ``--rows``-line CSV (``id,name,city,amount``)
goes into an empty table ``bench_import`` (id primary key, name, city, amount numeric):

- **batchd**: ``JobOperator.start`` of a one-step job ``CsvItemReader`` -> ``SqlItemWriter``
  (the table in the repository's own database, so the rows join the chunk's transaction:
  rows and checkpoint commit together, exactly once), chunk ``--chunk-size``.
- **floor**: ``csv.reader`` and the driver itself (``sqlite3`` / ``psycopg``): per chunk, in
  ONE transaction, one ``executemany`` INSERT of the rows and one UPDATE of a checkpoint row
  (counters and a JSON position), then COMMIT. On SQLite the connection has the
  repository's settings (WAL, ``synchronous = FULL``, ``BEGIN IMMEDIATE``).
- **pandas**: ``read_csv`` + ``to_sql(chunksize=...)`` through a SQLAlchemy Engine (one
  transaction for the whole file: no checkpoint, not restartable).
- **petl**: ``fromcsv`` + ``appenddb`` on a DB-API connection (one transaction, no checkpoint).

The table is emptied before every run and checked after it (row count, sum of the ids),
untimed. Runs alternate: round r runs the sides in an order rotated by r. Ratios are medians
over medians of the same run: batchd / floor and batchd / pandas. pandas and petl come from
the ``bench`` extra (``pip install -e '.[bench]'``); a missing one is left out.

    .venv/bin/python bench/file_import.py                          # 100,000 rows, 5 rounds
    .venv/bin/python bench/file_import.py --rows 20000 --repeat 1 --databases sqlite
    .venv/bin/python bench/file_import.py --databases sqlite --profile
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchkit
from chunk_throughput import WARMUP_ROWS, generate_inputs
from sqlalchemy import create_engine, text

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.items import CsvItemReader, SqlItemWriter

TABLE = "bench_import"
DDL = {
    "sqlite": f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
    "city TEXT NOT NULL, amount NUMERIC NOT NULL)",
    "postgresql": f"CREATE TABLE {TABLE} (id BIGINT PRIMARY KEY, name TEXT NOT NULL, "
    "city TEXT NOT NULL, amount NUMERIC(12, 2) NOT NULL)",
}
CHECKPOINT_DDL = (
    "CREATE TABLE IF NOT EXISTS bench_import_checkpoint (id INTEGER PRIMARY KEY, "
    "read_count INTEGER NOT NULL, commit_count INTEGER NOT NULL, context TEXT NOT NULL)"
)
# Targets of the issue (batchd time / other time).
TARGETS = {
    ("sqlite", "floor"): 1.3,
    ("sqlite", "pandas"): 1.0,
    ("postgresql", "floor"): 0.8,
    ("postgresql", "pandas"): 1.0,
}


# ----------------------------------------------------------------------------- floor
def floor_sqlite(path: Path, source: Path, chunk: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    insert = f"INSERT INTO {TABLE} (id, name, city, amount) VALUES (?, ?, ?, ?)"
    checkpoint = "UPDATE bench_import_checkpoint SET read_count = ?, commit_count = ?, context = ?"
    try:
        with open(source, newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            next(rows)
            done = commits = 0
            while batch := list(itertools.islice(rows, chunk)):
                done, commits = done + len(batch), commits + 1
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(insert, batch)
                conn.execute(checkpoint, (done, commits, json.dumps({"line": done + 1})))
                conn.execute("COMMIT")
    finally:
        conn.close()


def floor_postgresql(dsn: str, source: Path, chunk: int) -> None:
    import psycopg

    insert = f"INSERT INTO {TABLE} (id, name, city, amount) VALUES (%s, %s, %s, %s)"
    checkpoint = (
        "UPDATE bench_import_checkpoint SET read_count = %s, commit_count = %s, context = %s"
    )
    with psycopg.connect(dsn) as conn, open(source, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        next(rows)
        done = commits = 0
        while batch := list(itertools.islice(rows, chunk)):
            done, commits = done + len(batch), commits + 1
            with conn.cursor() as cur:
                cur.executemany(insert, batch)
                cur.execute(checkpoint, (done, commits, json.dumps({"line": done + 1})))
            conn.commit()


# ----------------------------------------------------------------------------- one database
class DatabaseBench:
    def __init__(self, database: str, url: str, tmp: Path, args: argparse.Namespace) -> None:
        self.database, self.url, self.tmp, self.args = database, url, tmp, args
        self.repository = SqlJobRepository(url)
        self.engine = create_engine(url)  # pandas' and the checks'
        with self.engine.begin() as conn:
            conn.execute(text(DDL[database]))
            conn.execute(text(CHECKPOINT_DDL))
            conn.execute(text("INSERT INTO bench_import_checkpoint VALUES (1, 0, 0, '{}')"))
        self.registry = JobRegistry()
        self.operator = JobOperator(self.repository, self.registry)
        self.counter = benchkit.ChunkStatementCounter(self.repository.engine)
        self.runs = itertools.count(1)
        self.statements = self.commits = 0
        # CPU seconds of this process per side: the load of others changes them far less
        # than the wall times (the fsyncs' waits are not in them).
        self.cpu: dict[str, list[float]] = {}

    def close(self) -> None:
        self.operator.shutdown()
        self.counter.remove()
        self.engine.dispose()
        self.repository.dispose()

    def empty(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(f"DELETE FROM {TABLE}"))

    def check(self, rows: int) -> None:
        with self.engine.connect() as conn:
            count, total = conn.execute(text(f"SELECT count(*), sum(id) FROM {TABLE}")).one()
        if (count, total) != (rows, rows * (rows + 1) // 2):
            raise RuntimeError(f"{self.database}: {count} rows, sum of ids {total}")

    def batchd(self, source: Path, rows: int) -> None:
        run = next(self.runs)
        self.counter.reset()
        execution = self.operator.start(self.job_name, {"run": run})
        if execution.status != BatchStatus.COMPLETED:
            raise RuntimeError(f"batchd ended {execution.status}: {execution.exit_message}")
        (step,) = execution.step_executions
        if step.write_count != rows:
            raise RuntimeError(f"batchd wrote {step.write_count} of {rows}")
        self.statements += self.counter.count
        self.commits += step.commit_count

    def floor(self, source: Path) -> None:
        if self.database == "sqlite":
            floor_sqlite(self.tmp / "repository.db", source, self.args.chunk_size)
        else:
            dsn = self.engine.url.set(drivername="postgresql").render_as_string(False)
            floor_postgresql(dsn, source, self.args.chunk_size)

    def pandas(self, source: Path) -> None:
        import pandas

        frame = pandas.read_csv(source)
        frame.to_sql(
            TABLE, self.engine, if_exists="append", index=False, chunksize=self.args.chunk_size
        )

    def petl(self, source: Path) -> None:
        import petl

        raw = self.engine.raw_connection()
        try:
            petl.appenddb(petl.fromcsv(str(source), encoding="utf-8"), raw.driver_connection, TABLE)
            raw.commit()
        finally:
            raw.close()

    def sides(self, source: Path, rows: int) -> dict[str, Callable[[], None]]:
        sides: dict[str, Callable[[], None]] = {
            "batchd": lambda: self.batchd(source, rows),
            "floor": lambda: self.floor(source),
        }
        for peer in ("pandas", "petl"):
            try:
                __import__(peer)
            except ImportError:
                continue
            sides[peer] = (lambda fn: lambda: fn(source))(getattr(self, peer))
        return sides

    def run(self, source: Path, warmup: Path) -> dict[str, list[float]]:
        rows, chunk = self.args.rows, self.args.chunk_size
        self.job_name = "import"
        for name, path in (("import_warmup", warmup), ("import", source)):
            step = (
                StepBuilder("load")
                .reader(CsvItemReader(path))
                .writer(SqlItemWriter(self.url, TABLE))
                .chunk_size(chunk)
                .build()
            )
            self.registry.register(JobBuilder(name).step(step).build())
        # Warm-up of every side, untimed.
        self.job_name = "import_warmup"
        for fn in self.sides(warmup, WARMUP_ROWS).values():
            self.empty()
            fn()
            self.check(WARMUP_ROWS)
        self.job_name = "import"
        self.statements = self.commits = 0
        sides = self.sides(source, rows)
        times: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for round_no in range(self.args.repeat):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                self.empty()
                cpu = time.process_time()
                seconds, _ = benchkit.timed(sides[name])
                self.cpu.setdefault(name, []).append(time.process_time() - cpu)
                times[name].append(seconds)
                self.check(rows)
        if self.args.profile:
            for name in ("batchd", "floor"):
                self.empty()
                print(f"\n=== profile: {name}, {self.database} ===")
                print(benchkit.profile(sides[name]))
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument(
        "--databases", type=lambda s: s.split(","), default=["sqlite", "postgresql"]
    )
    parser.add_argument("--tmpdir", help="where the CSV and the SQLite database go (a real disk)")
    parser.add_argument("--profile", action="store_true", help="cProfile batchd and the floor")
    args = parser.parse_args()
    with benchkit.scratch("batchd-import-", args.tmpdir) as tmp:
        source, warmup = tmp / "input.csv", tmp / "warmup.csv"
        generate_inputs(source, warmup, args.rows)
        print(
            f"# file_import: {args.rows:,} rows, chunk {args.chunk_size}, median of "
            f"{args.repeat}; {benchkit.machine()}"
        )

        def measure(database: str, url: str) -> Any:
            bench = DatabaseBench(database, url, tmp, args)
            try:
                times = bench.run(source, warmup)
            finally:
                bench.close()
            return database, times, bench.statements / max(bench.commits, 1), bench.cpu

        results = benchkit.on_each_database(args.databases, tmp, "bench_import", measure)
        headers = ["database", "side", "median s", "rows/s", "batchd / side", "target", "cpu s"]
        headers.append("batchd / side, cpu")
        lines = []
        for database, times, per_commit, cpu in results:
            ours = statistics.median(times["batchd"])
            our_cpu = statistics.median(cpu["batchd"])
            for side, runs in times.items():
                median = statistics.median(runs)
                ratio = ours / median
                side_cpu = statistics.median(cpu[side])
                target = TARGETS.get((database, side))
                lines.append(
                    [
                        database,
                        side,
                        f"{median:.3f}",
                        f"{args.rows / median:,.0f}",
                        "-" if side == "batchd" else f"{ratio:.2f}",
                        benchkit.verdict(ratio, target) if side != "batchd" else "-",
                        f"{side_cpu:.3f}",
                        "-" if side == "batchd" else f"{our_cpu / side_cpu:.2f}",
                    ]
                )
            lines.append([database, "stmts/commit", f"{per_commit:g}", "", "", "", "", ""])
        print(benchkit.table(headers, lines))
        print("# run times:")
        for database, times, _, _ in results:
            for side, runs in times.items():
                print(f"#   {database} {side}: [{', '.join(f'{t:.3f}' for t in runs)}] s")


if __name__ == "__main__":
    main()
