"""What ``isolation = "process"`` (DESIGN §6) costs and buys, against ``thread``, in one run.

Three cases, each against a real daemon (``daemon_latency.Daemon``: ``batchd run`` on a
SQLite repository in a temporary directory), once per isolation, the two daemons side by
side (started together, measured alternately), so that the ratios see the same load:

- **ping under CPU load**: the median round trip of ``ping`` on one control connection
  (``--pings`` of them), idle, then while two jobs spin on the CPU in pure Python.
  Goal: process mode's median with the two jobs <= 2 x its idle median.
- **fire -> STARTED**: ``fire`` of an interval schedule (24h, so only the request fires
  it), one schedule per fire; latency = the execution's ``start_time`` in the repository
  minus the wall clock just before the request (``daemon_latency.fires``).
  Goal: process p99 <= 1.5 x thread p99, and < 20 ms.
- **backfill**: ``backfill`` of a two-step job over 365 dates (max_concurrent 2); runs per
  second from the request to the last date COMPLETED. Goal: process >= 0.7 x thread.

    .venv/bin/python bench/worker_isolation.py
    .venv/bin/python bench/worker_isolation.py --fires 100 --pings 400 --days 365
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import benchkit
from daemon_latency import Client, Daemon, Repository, percentile

JOBS = """

class Spin(BaseModel):
    run: int
    seconds: float = 60.0


class Day(BaseModel):
    date: str


def spin(ctx: StepContext) -> None:
    import time
    deadline = time.monotonic() + ctx.params.seconds
    n = 0
    while time.monotonic() < deadline:
        for _ in range(10_000):
            n += 1
        ctx.check_stop()


batchd.register(
    JobBuilder("spin").params_model(Spin).step(StepBuilder("spin").tasklet(spin).build()).build()
)
batchd.register(
    JobBuilder("two_steps")
    .params_model(Day)
    .step(StepBuilder("first").tasklet(nothing).build())
    .step(StepBuilder("second").tasklet(nothing).build())
    .build()
)
"""


class IsolatedDaemon(Daemon):
    """The benchmarks' daemon with ``isolation`` set and the jobs above (its per-execution
    logs in its directory, as ``Daemon`` configures them)."""

    def __init__(self, tmp: Path, isolation: str, schedules: int) -> None:
        super().__init__(tmp, schedules=schedules)
        with open(tmp / "bench_jobs.py", "a", encoding="utf-8") as jobs:
            jobs.write(JOBS)
        self.config.write_text(f'isolation = "{isolation}"\n' + self.config.read_text())


def pings(client: Client, n: int) -> float:
    """Median ms of ``n`` pings on one connection."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.call("ping")
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def wait_for(predicate: Callable[[], bool], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.01)


def ping_under_load(daemon: IsolatedDaemon, repo: Repository, n: int) -> tuple[float, float]:
    client = Client(daemon.socket_path)
    try:
        idle = pings(client, n)
        ids = [
            client.call("start", job="spin", params={"run": n, "seconds": 600})["id"]
            for n in range(2)
        ]
        wait_for(
            lambda: all(
                repo.scalar("SELECT status FROM batch_job_execution WHERE id = ?", i) == "STARTED"
                for i in ids
            )
        )
        loaded = pings(client, n)
        client.call("stop", job="spin")
        wait_for(
            lambda: (
                not repo.scalar(
                    "SELECT count(*) FROM batch_job_execution WHERE job_name = 'spin'"
                    " AND status IN ('STARTING', 'STARTED', 'STOPPING')"
                )
            )
        )
    finally:
        client.close()
    return idle, loaded


def backfill(daemon: IsolatedDaemon, repo: Repository, days: int) -> float:
    """Runs per second of a backfill of ``two_steps`` over ``days`` dates."""
    client = Client(daemon.socket_path)
    first = date(2025, 1, 1)
    span = {"from": first.isoformat(), "to": (first + timedelta(days=days - 1)).isoformat()}
    try:
        t0 = time.perf_counter()
        client.call("backfill", job="two_steps", **span)
        wait_for(
            lambda: (
                repo.scalar(
                    "SELECT count(*) FROM batch_job_execution WHERE job_name = 'two_steps'"
                    " AND status = 'COMPLETED'"
                )
                == days
            )
        )
        return days / (time.perf_counter() - t0)
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fires", type=int, default=100)
    parser.add_argument("--pings", type=int, default=400)
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()
    modes = ("thread", "process")
    daemons = {
        mode: IsolatedDaemon(
            Path(tempfile.mkdtemp(prefix=f"batchd-{mode}-")), mode, schedules=args.fires
        )
        for mode in modes
    }
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {mode: {} for mode in modes}
    with daemons["thread"], daemons["process"]:
        repos = {mode: Repository(daemons[mode].database) for mode in modes}
        for mode in modes:
            results[mode]["ping"] = ping_under_load(daemons[mode], repos[mode], args.pings)
        # Fires alternate between the two daemons in blocks of ten.
        latencies: dict[str, list[float]] = {mode: [] for mode in modes}
        block = 10
        for start in range(0, args.fires, block):
            for mode in modes if start % (2 * block) == 0 else modes[::-1]:
                count = min(block, args.fires - start)
                latencies[mode] += fires_from(daemons[mode], repos[mode], start, count)
        for mode in modes:
            results[mode]["fires"] = latencies[mode]
        for mode in modes:
            results[mode]["backfill"] = backfill(daemons[mode], repos[mode], args.days)
    load_after = os.getloadavg()
    report(results, args, load_before, load_after)


def fires_from(daemon: Daemon, repo: Repository, start: int, n: int) -> list[float]:
    """As ``daemon_latency.fires``, for schedules ``s{start}`` to ``s{start + n - 1}``."""
    latencies = []
    client = Client(daemon.socket_path)
    try:
        for number in range(start, start + n):
            t0 = time.time()
            result = client.call("fire", schedule=f"s{number:03d}")
            if result["outcome"] != "started":
                raise RuntimeError(f"fire s{number:03d}: {result}")
            _, started = repo.wait_started(result["execution_id"] - 1)
            latencies.append((started - t0) * 1000)
    finally:
        client.close()
    return latencies


def report(
    results: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    thread, process = results["thread"], results["process"]
    print(f"# worker_isolation; {benchkit.machine()}")
    print(
        f"# load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
        f", after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
    )
    rows = []
    for mode, got in results.items():
        idle, loaded = got["ping"]
        rows.append(
            [
                mode,
                f"{idle:.2f}",
                f"{loaded:.2f}",
                f"{loaded / idle:.2f}",
                f"{statistics.median(got['fires']):.1f}",
                f"{percentile(got['fires'], 99):.1f}",
                f"{got['backfill']:.1f}",
            ]
        )
    print(
        benchkit.table(
            [
                "isolation",
                f"ping p50 ms idle (n={args.pings})",
                "ping p50 ms, 2 CPU jobs",
                "loaded/idle",
                f"fire->STARTED p50 ms (n={args.fires})",
                "p99 ms",
                f"backfill {args.days} dates runs/s",
            ],
            rows,
        )
    )
    ping_ratio = process["ping"][1] / process["ping"][0]
    p99 = percentile(process["fires"], 99)
    fire_ratio = p99 / percentile(thread["fires"], 99)
    runs_ratio = process["backfill"] / thread["backfill"]
    print(f"process: ping with 2 CPU jobs / idle = {ping_ratio:.2f} (goal <= 2)")
    print(
        f"process/thread fire->STARTED p99 = {fire_ratio:.2f} (goal <= 1.5),"
        f" process p99 {p99:.1f} ms (goal < 20)"
    )
    print(f"process/thread backfill runs/s = {runs_ratio:.2f} (goal >= 0.7)")


if __name__ == "__main__":
    main()
