"""Partition speed-up: a CPU-bound chunk step run with 2 partitions on spawned worker
processes against the same step with 1 partition, in the same run; and what each partition
costs (many small partitions against one, on threads and on processes).

The step: ``ListItemReader(range(items))`` -> ``Burn`` (pure-Python arithmetic, 400 steps of
a linear congruential generator per item, about 40 µs) -> ``CsvItemWriter`` to one file per
partition (``<job>_{run}_{partition[index]}.csv`` in a temporary directory, fsync at every
commit, the default), chunk size 1000, partitioned by ``Ranges`` (contiguous index ranges),
repository ``SqlJobRepository`` on SQLite in the same directory. Each run is a new job
instance (parameter ``run``), timed around ``JobOperator.start``; every run must end
COMPLETED with every partition COMPLETED, read and write counts equal to the items, and the
output files holding each id exactly once, or the script stops.

The machine's own ceiling is measured in the same rounds: ``Burn`` over the same items in
one and in two processes of a warm, bare ``ProcessPoolExecutor`` (no batchd, no start-up).
For every run, "others" is the CPU that other processes took meanwhile (from /proc/stat,
steal included, minus this process's and its workers'), in cores: on 2 cores, 2 partitions
cannot run twice as fast while others take a core.

    .venv/bin/python bench/partition_speedup.py                 # full run (make bench)
    .venv/bin/python bench/partition_speedup.py --items 20000 --repeat 1 --overhead-repeat 3
    .venv/bin/python bench/partition_speedup.py --profile       # + cProfile of the parent

Reader, processor, writer and partitioner are module-level classes: worker processes are
spawned and unpickle them by reference (this module is re-imported there as ``__mp_main__``,
hence the ``if __name__ == "__main__"`` guard).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import benchkit

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.items import CsvItemWriter, ListItemReader

SPEEDUP_TARGET = 1.7  # 1-partition seconds / 2-partition seconds, on 2 cores
CHUNK_SIZE = 1000

Timing = tuple[float, float]  # (wall seconds, cores taken by other processes meanwhile)


# ----------------------------------------------------------------------------- the step
class Burn:
    """The processor: ``rounds`` steps of an LCG on the item (deterministic, pure Python)."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def process(self, item: int) -> dict[str, int]:
        x = item
        for _ in range(self.rounds):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        return {"id": item, "value": x}


class Ranges:
    """The partitioner: ``n`` contiguous ranges of the indexes ``0 .. total - 1``,
    ``{"start": a, "end": b}`` with both ends inclusive (as ListItemReader reads them)."""

    def __init__(self, total: int) -> None:
        self.total = total

    def partition(self, n: int, params: Any) -> list[dict[str, int]]:
        bounds = [self.total * i // n for i in range(n + 1)]
        return [{"start": a, "end": b - 1} for a, b in itertools.pairwise(bounds)]


def burn_range(rounds: int, start: int, stop: int) -> float:
    """The bare work of items ``start .. stop - 1``, in a pool's worker; its CPU seconds."""
    cpu = time.process_time()
    burn = Burn(rounds)
    for item in range(start, stop):
        burn.process(item)
    return time.process_time() - cpu


# ----------------------------------------------------------------------------- timing
def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended (a
    partitioned step's workers are joined before ``JobOperator.start`` returns)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (steal included) since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def measure(fn: Callable[[], Any]) -> Timing:
    """Wall seconds of ``fn()``, and the CPU others took meanwhile, in cores. ``fn`` may
    return CPU seconds that ``cpu_seconds`` does not see (a warm pool's workers)."""
    start, busy, own = time.perf_counter(), machine_busy(), cpu_seconds()
    unseen = fn() or 0.0
    seconds = time.perf_counter() - start
    others = machine_busy() - busy - (cpu_seconds() - own) - unseen
    return seconds, max(others, 0.0) / seconds


def alternate(repeat: int, runs: dict[str, Callable[[], Timing]]) -> dict[str, list[Timing]]:
    """Every case once per round, in the given order on even rounds and reversed on odd
    ones; the timings of each run, by case."""
    timings: dict[str, list[Timing]] = {label: [] for label in runs}
    for round_no in range(repeat):
        order = list(runs.items())
        if round_no % 2:
            order.reverse()
        for label, run in order:
            timings[label].append(run())
    return timings


def median(timings: list[Timing], which: int = 0) -> float:
    return statistics.median(t[which] for t in timings)


def run_times(timings: dict[str, list[Timing]]) -> str:
    """Every run: seconds (cores taken by others)."""
    lines = ["# run times, s (cores taken by other processes):"]
    for label, runs in timings.items():
        lines.append(f"#   {label}: {', '.join(f'{s:.3f} ({o:.2f})' for s, o in runs)}")
    return "\n".join(lines)


def processor_us(rounds: int, items: int = 20_000) -> float:
    """µs per item of ``Burn`` alone, in this process."""
    start = time.perf_counter()
    burn_range(rounds, 0, items)
    return (time.perf_counter() - start) / items * 1e6


# ----------------------------------------------------------------------------- batchd
class Bench:
    """One SQLite repository and operator; a job per case, a new instance per run."""

    def __init__(self, tmp: Path, rounds: int) -> None:
        self.tmp = tmp
        self.rounds = rounds
        self.repository = SqlJobRepository(f"sqlite:///{tmp / 'repository.db'}")
        self.registry = JobRegistry()
        self.operator = JobOperator(self.repository, self.registry)
        self.runs = itertools.count(1)
        self.cases: dict[str, tuple[int, int]] = {}  # job name -> (items, partitions)

    def close(self) -> None:
        self.operator.shutdown()
        self.repository.dispose()

    def add(self, items: int, partitions: int, executor: str) -> str:
        name = f"burn_{items}_{executor}_{partitions}"
        step = (
            StepBuilder("burn")
            .reader(ListItemReader(range(items)))
            .processor(Burn(self.rounds))
            .writer(CsvItemWriter(str(self.tmp / f"{name}_{{run}}_{{partition[index]}}.csv")))
            .chunk_size(CHUNK_SIZE)
            .partitioner(Ranges(items), partitions=partitions)
            .executor(executor)
            .build()
        )
        self.registry.register(JobBuilder(name).step(step).build())
        self.cases[name] = (items, partitions)
        return name

    def run(self, name: str) -> Timing:
        """``JobOperator.start`` of a new instance, timed; then checked (untimed)."""
        run = next(self.runs)
        executions = []
        timing = measure(lambda: executions.append(self.operator.start(name, {"run": run})))
        self.check(name, run, executions[0])
        return timing

    def check(self, name: str, run: int, execution: Any) -> None:
        items, partitions = self.cases[name]
        what = f"{name} run {run}"
        if execution.status != BatchStatus.COMPLETED:
            raise RuntimeError(f"{what} ended {execution.status}: {execution.exit_message}")
        steps = {s.step_name: s for s in execution.step_executions}
        parts = [s for n, s in steps.items() if n.startswith("burn:")]
        if len(parts) != partitions or any(p.status != BatchStatus.COMPLETED for p in parts):
            raise RuntimeError(f"{what}: partitions {[(p.step_name, p.status) for p in parts]}")
        for step in [steps["burn"], *parts]:
            if step.read_count != step.write_count:
                raise RuntimeError(
                    f"{what}: {step.step_name} read {step.read_count}, wrote {step.write_count}"
                )
        if steps["burn"].read_count != items or sum(p.read_count for p in parts) != items:
            raise RuntimeError(f"{what}: read {steps['burn'].read_count}, expected {items}")
        ids = []
        for path in self.tmp.glob(f"{name}_{run}_*.csv"):
            with open(path, encoding="utf-8") as f:
                ids += [int(line.split(",", 1)[0]) for line in f if not line.startswith("id,")]
            path.unlink()
        if sorted(ids) != list(range(items)):
            raise RuntimeError(
                f"{what}: the output files hold {len(ids)} rows, not ids 0..{items - 1}"
            )


# ----------------------------------------------------------------------------- the parts
def speedup(bench: Bench, args: argparse.Namespace) -> None:
    """Part 1: 1 against 2 partitions on processes; the bare pool's 1 against 2 processes."""
    one = bench.add(args.items, 1, "processes")
    two = bench.add(args.items, 2, "processes")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:

        def bare(n: int) -> Timing:
            bounds = [args.items * i // n for i in range(n + 1)]
            return measure(lambda: sum(pool.map(burn_range, [args.rounds] * n, bounds, bounds[1:])))

        list(pool.map(burn_range, [args.rounds] * 2, [0, 0], [1, 1]))  # start both workers
        timings = alternate(
            args.repeat,
            {
                "batchd 1 partition": lambda: bench.run(one),
                "batchd 2 partitions": lambda: bench.run(two),
                "bare pool 1 process": lambda: bare(1),
                "bare pool 2 processes": lambda: bare(2),
            },
        )
    rows = []
    for what, label1, label2 in [
        ("batchd, processes", "batchd 1 partition", "batchd 2 partitions"),
        ("bare warm pool (ceiling)", "bare pool 1 process", "bare pool 2 processes"),
    ]:
        t1, t2 = median(timings[label1]), median(timings[label2])
        others = f"{median(timings[label1], 1):.2f} / {median(timings[label2], 1):.2f}"
        ratio = t1 / t2
        verdict = "-"
        if what.startswith("batchd"):
            verdict = f">= {SPEEDUP_TARGET} {'met' if ratio >= SPEEDUP_TARGET else 'MISSED'}"
        rows.append([what, f"{t1:.2f}", f"{t2:.2f}", f"{ratio:.2f}", verdict, others])
    headers = ["case", "1 partition s", "2 partitions s", "speed-up", "target", "others, cores"]
    print(benchkit.table(headers, rows))
    print(run_times(timings))
    if args.profile:
        for name in (one, two):
            print(f"\n=== profile of the parent: {name} ===")
            print(benchkit.profile(lambda name=name: bench.run(name)))


def overhead_jobs(bench: Bench, args: argparse.Namespace) -> dict[tuple[str, int], str]:
    """The jobs of part 2, each run once untimed (also the warm-up of part 1)."""
    names = {
        (executor, n): bench.add(args.tiny_items, n, executor)
        for executor in ("threads", "processes")
        for n in [1, *args.partitions]
    }
    for name in names.values():
        bench.run(name)
    return names


def overhead(bench: Bench, args: argparse.Namespace, names: dict[tuple[str, int], str]) -> None:
    """Part 2: 1 against N partitions over ``args.tiny_items`` items, threads and processes."""
    runs = {f"{e} {n}": (lambda name=name: bench.run(name)) for (e, n), name in names.items()}
    timings = alternate(args.overhead_repeat, runs)
    t = {key: median(timings[f"{key[0]} {key[1]}"]) for key in names}
    rows = []
    for executor in ("threads", "processes"):
        t1 = t[executor, 1]
        row = [executor, f"{t1 * 1e3:.1f}"]
        for n in args.partitions:
            row += [f"{t[executor, n] * 1e3:.1f}", f"{(t[executor, n] - t1) / (n - 1) * 1e3:.2f}"]
        rows.append(row)
    headers = ["executor", "1 partition ms"]
    for n in args.partitions:
        headers += [f"{n} partitions ms", f"ms/partition ({n})"]
    print(benchkit.table(headers, rows))
    pool = t["processes", 1] - t["threads", 1]
    print(f"# starting the process pool (1 partition, processes - threads): {pool * 1e3:.0f} ms")
    if len(args.partitions) > 1:  # leaves out the second worker's start, on processes
        a, b = args.partitions[-2:]
        marginal = {e: (t[e, b] - t[e, a]) / (b - a) * 1e3 for e in ("threads", "processes")}
        print(
            f"# from {a} to {b} partitions, per partition: threads {marginal['threads']:.2f} ms,"
            f" processes {marginal['processes']:.2f} ms"
        )
    print(run_times(timings))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000, help="items of the speed-up case")
    parser.add_argument("--rounds", type=int, default=400, help="LCG steps per item")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each speed-up case")
    parser.add_argument("--tiny-items", type=int, default=64, help="items of the overhead case")
    parser.add_argument(
        "--partitions",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[2, 8, 32],
        help="partition counts compared with 1 in the overhead case (default 2,8,32)",
    )
    parser.add_argument(
        "--overhead-repeat", type=int, default=9, help="timed runs of each overhead case"
    )
    parser.add_argument("--tmpdir", help="where the outputs and the SQLite repository go")
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile one more speed-up run of each"
    )
    args = parser.parse_args()
    if min(args.items, args.repeat, args.tiny_items, args.overhead_repeat) < 1:
        parser.error("--items, --repeat, --tiny-items and --overhead-repeat must be >= 1")
    if any(n < 2 for n in args.partitions):
        parser.error("--partitions must be at least 2")
    return args


def main() -> None:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="batchd-bench-", dir=args.tmpdir))
    bench = Bench(tmp, args.rounds)
    try:
        print(
            f"# partition_speedup: chunk size {CHUNK_SIZE}, processor {args.rounds} LCG steps "
            f"= {processor_us(args.rounds):.1f} µs per item (alone, in this process); "
            f"{benchkit.machine()}; files in {tmp}"
        )
        names = overhead_jobs(bench, args)
        print(f"\n## speed-up: {args.items:,} items, median of {args.repeat}")
        speedup(bench, args)
        print(
            f"\n## per-partition overhead: {args.tiny_items} items, median of "
            f"{args.overhead_repeat} (after one untimed run of each, first of all)"
        )
        overhead(bench, args, names)
        print(f"# load average after the run: {benchkit.load_average()}")
    finally:
        bench.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
