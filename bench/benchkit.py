"""What the benchmarks share: a throw-away PostgreSQL server, a counter of the SQL statements
run in chunk transactions, repeated timing, profiles and a plain-text table.

Imported by the scripts of this folder as ``import benchkit`` (the folder of the running
script is the first entry of ``sys.path``), before any ``batchd`` import: importing it puts
the repository root first on ``sys.path``, so that ``batchd`` is this checkout's package
(whatever the virtualenv's editable install points to) and ``tests.pgserver`` is importable.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Column, DateTime, Engine, Integer, MetaData, Table, Text, delete, event
from sqlalchemy import insert as sql_insert
from sqlalchemy import update as sql_update

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

T = TypeVar("T")

# Statements that only open or end a transaction (or a savepoint): not counted.
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "END")


# ----------------------------------------------------------------------------- PostgreSQL
@contextmanager
def postgres_server() -> Iterator[Any]:
    """A started ``tests.pgserver.PostgresServer`` (fsync off, cluster in /dev/shm when it
    has room), stopped and removed on exit."""
    from tests.pgserver import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def mariadb_server() -> Iterator[Any]:
    """A started ``tests.mysqlserver.MariaDBServer`` (unix socket, log flushed once a second,
    data in /dev/shm when it has room), stopped and removed on exit."""
    from tests.mysqlserver import MariaDBServer

    server = MariaDBServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def database_server(name: str) -> Any:
    """The context manager of a server for ``name`` (postgresql or mariadb)."""
    return {"postgresql": postgres_server, "mariadb": mariadb_server}[name]()


def on_each_database(
    names: list[str], tmp: Path, database: str, measure: Callable[[str, str], T]
) -> list[T]:
    """``measure(name, url)`` for each chosen database: SQLite in ``tmp``, PostgreSQL and
    MariaDB on servers started here (each with a new database named ``database``), all
    servers stopped at the end."""
    with ExitStack() as stack:
        results = []
        for name in names:
            if name == "sqlite":
                url = f"sqlite:///{tmp / 'repository.db'}"
            else:
                url = stack.enter_context(database_server(name)).create_database(database)
            results.append(measure(name, url))
        return results


# ----------------------------------------------------------------------------- checkpoints
checkpoint_metadata = MetaData()
checkpoint_table = Table(
    "bench_checkpoint",
    checkpoint_metadata,
    Column("id", Integer, primary_key=True),
    Column("read_count", Integer, nullable=False),
    Column("write_count", Integer, nullable=False),
    Column("commit_count", Integer, nullable=False),
    Column("context", Text, nullable=False),
    Column("last_updated", DateTime, nullable=False),
)
_CHECKPOINT_UPDATE = sql_update(checkpoint_table).where(checkpoint_table.c.id == 1)


def utc_now() -> datetime:
    """Naive UTC (the checkpoint table's DateTime has no time zone)."""
    return datetime.now(UTC).replace(tzinfo=None)


def create_checkpoint_row(engine: Engine) -> None:
    """The baselines' checkpoint table, with its one row (id 1)."""
    checkpoint_metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(delete(checkpoint_table))
        conn.execute(
            sql_insert(checkpoint_table).values(
                id=1,
                read_count=0,
                write_count=0,
                commit_count=0,
                context="{}",
                last_updated=utc_now(),
            )
        )


def save_checkpoint(conn: Any, items: int, commits: int, position: dict[str, Any]) -> None:
    """A baseline's one statement per chunk: counters and position (JSON) of row 1."""
    conn.execute(
        _CHECKPOINT_UPDATE,
        {
            "read_count": items,
            "write_count": items,
            "commit_count": commits,
            "context": json.dumps(position),
            "last_updated": utc_now(),
        },
    )


# ----------------------------------------------------------------------------- statements
class ChunkStatementCounter:
    """Counts the statements executed on the connection of the chunk transaction that the
    engine has published in ``batchd.model.current_chunk_transaction``, leaving out
    transaction control (BEGIN, COMMIT, SAVEPOINT...). ``matching`` narrows the count to
    statements containing that text (e.g. a table name)."""

    def __init__(self, engine: Engine, matching: str | None = None) -> None:
        self.engine = engine
        self.matching = matching
        self.count = 0
        from batchd.model import current_chunk_transaction

        self._current = current_chunk_transaction
        event.listen(engine, "before_cursor_execute", self._on_execute)

    def _on_execute(
        self,
        conn: Any,
        _cursor: Any,
        statement: str,
        _parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> None:
        tx = self._current.get()
        if tx is None or tx.connection is not conn:
            return
        if statement.lstrip().upper().startswith(TRANSACTION_CONTROL):
            return
        if self.matching is not None and self.matching not in statement:
            return
        self.count += 1

    def reset(self) -> None:
        self.count = 0

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on_execute)


# ----------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of ``fn()``."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


@dataclass
class Timings:
    """Wall times of the repeated runs of one case, batchd and baseline."""

    batchd: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)

    @property
    def batchd_median(self) -> float:
        return statistics.median(self.batchd)

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline)

    @property
    def ratio(self) -> float:
        """batchd time / baseline time (medians): 1.0 is no overhead at all."""
        return self.batchd_median / self.baseline_median


def alternate(
    repeat: int,
    run_batchd: Callable[[int], None],
    run_baseline: Callable[[int], None],
    before_each: Callable[[], None] | None = None,
    after_each: Callable[[], None] | None = None,
) -> Timings:
    """Run batchd and the baseline ``repeat`` times each, alternating (batchd first on even
    rounds, the baseline first on odd ones, so neither always runs on a warmer cache);
    ``before_each`` and ``after_each`` (a check of the output) run untimed around every run."""
    timings = Timings()
    for round_no in range(repeat):
        order = [("batchd", run_batchd), ("baseline", run_baseline)]
        if round_no % 2:
            order.reverse()
        for kind, run in order:
            if before_each is not None:
                before_each()
            seconds, _ = timed(partial(run, round_no))
            getattr(timings, kind).append(seconds)
            if after_each is not None:
                after_each()
    return timings


# ----------------------------------------------------------------------------- command line
def chunk_arguments(
    description: str | None,
    *,
    rows_help: str,
    chunk_sizes: list[int],
    databases: list[str],
) -> argparse.ArgumentParser:
    """The options of the chunk benchmarks: ``--rows``, ``--repeat``, ``--chunk-sizes``,
    ``--databases`` (checked by :func:`check_chunk_arguments`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", type=int, default=100_000, help=rows_help)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each, >= 1")
    parser.add_argument(
        "--chunk-sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=chunk_sizes,
        help=f"comma-separated (default {','.join(map(str, chunk_sizes))})",
    )
    parser.add_argument(
        "--databases", type=lambda s: s.split(","), default=databases, help=",".join(databases)
    )
    return parser


def check_chunk_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, known: Sequence[str]
) -> argparse.Namespace:
    if args.repeat < 1 or args.rows < 1:
        parser.error("--rows and --repeat must be at least 1")
    unknown = set(args.databases) - set(known)
    if unknown:
        parser.error(f"unknown database {sorted(unknown)[0]!r}")
    return args


@contextmanager
def scratch(prefix: str, directory: str | None = None) -> Iterator[Path]:
    """A temporary directory for one benchmark run; on the way out, the load average (what
    others did on the machine meanwhile) is printed and the directory removed."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    try:
        yield tmp
        print(f"# load average after the run: {load_average()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- profiles
def profile(fn: Callable[[], Any], top: int = 25) -> str:
    """cProfile ``fn()``; the ``top`` functions by own time, then by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        fn()
    finally:
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ----------------------------------------------------------------------------- output
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (Markdown pipe syntax, so it pastes into README.md as it is)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def verdict(ratio: float, target: float | None) -> str:
    """``"<= 1.3 met"`` / ``"<= 1.3 MISSED"``, or ``"-"`` where there is no target."""
    if target is None:
        return "-"
    return f"<= {target} {'met' if ratio <= target else 'MISSED'}"


def run_times(cases: Sequence[tuple[str, Timings]]) -> str:
    """The seconds of every run, to judge the noise behind the medians."""
    lines = []
    for label, timings in cases:
        batchd = ", ".join(f"{t:.2f}" for t in timings.batchd)
        baseline = ", ".join(f"{t:.2f}" for t in timings.baseline)
        lines.append(f"#   {label}: batchd [{batchd}] s, baseline [{baseline}] s")
    return "\n".join(["# run times:", *lines])


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: others' work on the machine shows here."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    """One line describing where the benchmark ran."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for text in f:
                if text.startswith("model name"):
                    cpu = text.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"load average {load_average()}"
    )
