"""Per-run cost: a 365-date backfill of a two-step job, every run recorded durably, batchd
against Luigi's local scheduler with one worker, in the same run.

- **batchd**: ``JobOperator.start("two_steps", {"date": d})`` for each of ``--dates`` dates,
  one after another; the job has two tasklet steps that do nothing; the repository is
  SQLite on disk (WAL, ``synchronous = FULL``), so every run's instance, execution and
  steps are recorded durably.
- **luigi**: ``luigi.build([Second(date=d) for d in dates], local_scheduler=True,
  workers=1)``, ``Second`` requiring ``First``; each task writes its output file (a
  ``LocalTarget``: a temporary file renamed into place), which is how Luigi records that a
  task ran.

Rounds alternate (batchd first on even rounds). Printed: runs per second of each (medians),
the ratio, and per batchd run the statements and write transactions (``BEGIN IMMEDIATE``)
on the repository's Engine, counted by a ``before_cursor_execute`` listener, with the
statements grouped by their first words (``--statements``). Luigi comes from the ``bench``
extra (``pip install -e '.[bench]'``).

    .venv/bin/python bench/per_run.py                        # 365 dates, 3 rounds
    .venv/bin/python bench/per_run.py --dates 60 --repeat 1 --statements
    .venv/bin/python bench/per_run.py --profile              # cProfile of one batchd round
"""

from __future__ import annotations

import argparse
import collections
import logging
import re
import shutil
import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import benchkit
from sqlalchemy import event

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder


def nothing(_ctx: Any) -> None:
    """A tasklet that does nothing: what is measured is the framework's cost of a run."""


class Statements:
    """Counts the statements on an Engine; transaction control apart."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.kinds: collections.Counter[str] = collections.Counter()
        self.statements = self.writes = 0
        event.listen(engine, "before_cursor_execute", self.on_execute)

    def on_execute(self, _conn: Any, _cur: Any, statement: str, *_args: Any) -> None:
        head = statement.lstrip().upper()
        if head.startswith("BEGIN IMMEDIATE"):
            self.writes += 1
        if head.startswith(benchkit.TRANSACTION_CONTROL) or head.startswith("PRAGMA"):
            return
        self.statements += 1
        words = re.sub(r"\s+", " ", statement.strip()).split(" ")
        kind = " ".join(words[:3] if words[0] in ("INSERT", "DELETE") else words[:2])
        if words[0] == "SELECT":
            kind = "SELECT ... FROM " + next(
                (words[i + 1] for i, w in enumerate(words) if w == "FROM"), "?"
            )
        self.kinds[kind] += 1

    def reset(self) -> None:
        self.kinds.clear()
        self.statements = self.writes = 0


def luigi_round(out: Path, dates: list[date]) -> None:
    import luigi

    class First(luigi.Task):
        day = luigi.DateParameter()

        def output(self) -> Any:
            return luigi.LocalTarget(str(out / f"first_{self.day}"))

        def run(self) -> None:
            with self.output().open("w") as f:
                f.write("done\n")

    class Second(luigi.Task):
        day = luigi.DateParameter()

        def requires(self) -> Any:
            return First(day=self.day)

        def output(self) -> Any:
            return luigi.LocalTarget(str(out / f"second_{self.day}"))

        def run(self) -> None:
            with self.output().open("w") as f:
                f.write("done\n")

    ok = luigi.build(
        [Second(day=d) for d in dates], local_scheduler=True, workers=1, log_level="ERROR"
    )
    if not ok:
        raise RuntimeError("luigi's build failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dates", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmpdir", help="where the SQLite repository goes (a real disk)")
    parser.add_argument("--statements", action="store_true", help="statements per run by kind")
    parser.add_argument("--profile", action="store_true", help="cProfile one more batchd round")
    args = parser.parse_args()
    logging.getLogger("luigi-interface").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="batchd-per-run-", dir=args.tmpdir))
    try:
        repository = SqlJobRepository(f"sqlite:///{tmp / 'repository.db'}")
        registry = JobRegistry()
        registry.register(
            JobBuilder("two_steps")
            .step(StepBuilder("first").tasklet(nothing).build())
            .step(StepBuilder("second").tasklet(nothing).build())
            .build()
        )
        operator = JobOperator(repository, registry)
        counter = Statements(repository.engine)
        rounds = iter(range(10**6))
        start = date(2001, 1, 1)

        def batchd_round(_round: int = 0) -> None:
            # Each round backfills dates never run before: every run is a new instance.
            first = start + timedelta(days=next(rounds) * args.dates)
            for i in range(args.dates):
                execution = operator.start("two_steps", {"date": str(first + timedelta(i))})
                if execution.status != BatchStatus.COMPLETED:
                    raise RuntimeError(f"run ended {execution.status}")

        def luigi_run(round_no: int) -> None:
            out = tmp / f"luigi_{round_no}"
            out.mkdir()
            luigi_round(out, [start + timedelta(i) for i in range(args.dates)])

        # Warm-up (10 dates each), untimed.
        saved, args.dates = args.dates, 10
        batchd_round()
        luigi_run(-1)
        args.dates = saved
        counter.reset()
        timings = benchkit.alternate(args.repeat, batchd_round, luigi_run)
        runs = args.repeat * args.dates
        statements, writes, kinds = counter.statements, counter.writes, counter.kinds.copy()
        print(
            f"# per_run: {args.dates} dates of a two-step tasklet job, median of "
            f"{args.repeat}; {benchkit.machine()}"
        )
        batchd_rate = args.dates / timings.batchd_median
        luigi_rate = args.dates / timings.baseline_median
        print(
            benchkit.table(
                ["side", "median s", "runs/s", "statements/run", "write transactions/run"],
                [
                    [
                        "batchd",
                        f"{timings.batchd_median:.2f}",
                        f"{batchd_rate:.0f}",
                        f"{statements / runs:g}",
                        f"{writes / runs:g}",
                    ],
                    ["luigi", f"{timings.baseline_median:.2f}", f"{luigi_rate:.0f}", "-", "-"],
                ],
            )
        )
        ratio = batchd_rate / luigi_rate
        print(
            f"# batchd runs/s / luigi runs/s = {ratio:.2f} (target >= 1: "
            f"{'met' if ratio >= 1 else 'MISSED'})"
        )
        print(benchkit.run_times([("backfill", timings)]).replace("baseline", "luigi"))
        if args.statements:
            print("# statements per run, by kind:")
            for kind, n in kinds.most_common():
                print(f"#   {n / runs:5.2f}  {kind}")
        if args.profile:
            print(benchkit.profile(batchd_round, top=40))
        print(f"# load average after the run: {benchkit.load_average()}")
        operator.shutdown()
        repository.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
