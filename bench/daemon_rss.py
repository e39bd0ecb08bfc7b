"""Resident memory of the real daemon after many short executions.

A daemon subprocess (SQLite repository in a temporary directory, see ``daemon_latency.py``)
runs ``--n`` executions of a one-tasklet job that does nothing, each started over the control
socket with ``start`` and distinct parameters, at most ``--in-flight`` at a time. VmRSS
(``/proc/<pid>/status``) is read once the first ``--first`` executions have all ended
(COMPLETED in the repository) and then every ``--every`` executions; the growth is that of
the last reading against the first (target: within 10 %, from 100 to 10,000 executions).
A run that passes ``--max-seconds`` stops starting executions and reports what it measured.

Idle RSS: the daemon's VmRSS once READY=1 and 2 s of rest, before any execution, beside the
peer's (an APScheduler ``BackgroundScheduler`` with one interval job and a watchdog
``Observer`` on one directory, in its own interpreter, the same 2 s after start). Read twice:
at the first start, which creates the schema (and so imports Alembic), and at a second start
on that repository (schema at head: every start but the first), the figure the target is
judged on. Only the main process's VmRSS is the daemon's figure. With ``isolation =
"process"`` the daemon also keeps a warm process (an interpreter of its own, started by the
daemon with ``subprocess``, not forked from it, which imports the engine and the job
modules) and one spare worker forked from the warm process; they are shown apart, each as
VmRSS, PSS (each shared page divided among the processes mapping it) and USS (pages mapped
by this process alone), from ``/proc/<pid>/smaps_rollup``. The spare shares almost every
page with the warm process (fork, copy on write), so both USS are small and the sum of
their PSS is what the pair costs; the last line sums the PSS of every process of the daemon.

    .venv/bin/python bench/daemon_rss.py                          # 10,000 executions
    .venv/bin/python bench/daemon_rss.py --n 1000 --every 300 --isolation thread
    .venv/bin/python bench/daemon_rss.py --n 0                    # idle figures only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchkit  # first: puts the repository root first on sys.path
from daemon_latency import Client, Daemon, Repository

PEER = """\
import sys, time
from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

scheduler = BackgroundScheduler()
scheduler.add_job(lambda: None, "interval", hours=24)
scheduler.start()
observer = Observer()
observer.schedule(FileSystemEventHandler(), sys.argv[1])
observer.start()
time.sleep(2)
with open("/proc/self/status") as status:
    print(next(line.split()[1] for line in status if line.startswith("VmRSS:")))
observer.stop()
scheduler.shutdown()
"""


def peer_idle_kib(tmp: Path) -> int | None:
    """VmRSS of APScheduler + watchdog at rest; None when they are not installed."""
    done = subprocess.run(
        [sys.executable, "-c", PEER, str(tmp)], capture_output=True, text=True, check=False
    )
    return int(done.stdout) if done.returncode == 0 else None


def memory_kib(pid: int) -> tuple[int, int, int]:
    """VmRSS, PSS and USS (private clean + dirty) of ``pid``, KiB."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
        for text in rollup:
            parts = text.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    uss = fields["Private_Clean"] + fields["Private_Dirty"]
    return fields["Rss"], fields["Pss"], uss


def children(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def idle_figures(tmp: Path, daemon: Daemon, first_kib: int) -> None:
    """The idle daemon (its second start), its warm process and spares, and the peer."""
    idle = daemon.rss_kib()
    peer = peer_idle_kib(tmp)
    peer_text = "not installed" if peer is None else f"{peer / 1024:.1f} MiB"
    ratio = "" if peer is None else f" ({idle / peer:.2f}x)"
    verdict = "met" if idle <= 50 * 1024 else "MISSED"
    print(
        f"# idle VmRSS, main process: first start (creates the schema) {first_kib / 1024:.1f} "
        f"MiB; second start {idle / 1024:.1f} MiB (target <= 50 MiB: {verdict}); "
        f"APScheduler + watchdog {peer_text}{ratio}",
        flush=True,
    )
    total_pss = memory_kib(daemon.pid)[1]
    print(f"#   main process: PSS {total_pss / 1024:.1f} MiB", flush=True)
    for warm in children(daemon.pid):
        for role, pid in [("warm process", warm)] + [("spare worker", s) for s in children(warm)]:
            rss, pss, uss = memory_kib(pid)
            total_pss += pss
            print(
                f"#   {role} {pid}: VmRSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB, "
                f"USS {uss / 1024:.1f} MiB",
                flush=True,
            )
    print(f"#   every process of the daemon together: PSS {total_pss / 1024:.1f} MiB", flush=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    readings: list[tuple[int, int, float]] = []  # (executions ended, VmRSS KiB, seconds)
    with Daemon(tmp, max_jobs=args.in_flight, isolation=args.isolation) as daemon:
        time.sleep(2)
        first_kib = daemon.rss_kib()
    daemon.notify_path.unlink()  # the stand-in NOTIFY_SOCKET, bound again below
    with Daemon(tmp, max_jobs=args.in_flight, isolation=args.isolation) as daemon:
        time.sleep(2)
        idle_figures(tmp, daemon, first_kib)
        if args.n == 0:
            return
        repo = Repository(daemon.database)
        client = Client(daemon.socket_path)
        begin = time.monotonic()
        started = ended = 0
        checkpoints = [args.first, *range(args.every, args.n + 1, args.every)]
        checkpoints = sorted({c for c in checkpoints if c <= args.n} | {args.n})

        def count_ended() -> int:
            return int(
                repo.scalar("SELECT count(*) FROM batch_job_execution WHERE end_time IS NOT NULL")
            )

        try:
            for checkpoint in checkpoints:
                while ended < checkpoint:
                    if started < checkpoint and started - ended < args.in_flight:
                        client.call("start", job="noop", params={"key": f"r{started}"})
                        started += 1
                        continue
                    time.sleep(0.002)
                    ended = count_ended()
                failed = repo.scalar(
                    "SELECT count(*) FROM batch_job_execution WHERE status != 'COMPLETED'"
                )
                if failed:
                    raise RuntimeError(f"{failed} executions did not complete")
                time.sleep(0.2)  # let the job threads and the socket settle
                readings.append((ended, daemon.rss_kib(), time.monotonic() - begin))
                print(f"#   {ended:>6} ended: VmRSS {readings[-1][1]:,} KiB", flush=True)
                if time.monotonic() - begin > args.max_seconds:
                    print(f"# stopped after {args.max_seconds} s, at {ended} executions")
                    break
        finally:
            client.close()
            repo.close()
    first, last = readings[0], readings[-1]
    growth = (last[1] - first[1]) / first[1] * 100
    rows: list[list[Any]] = [
        [f"{n:,}", f"{kib / 1024:.1f}", f"{(kib - first[1]) / first[1] * 100:+.1f}", f"{s:.0f}"]
        for n, kib, s in readings
    ]
    print(benchkit.table(["executions ended", "VmRSS MiB", "vs first %", "elapsed s"], rows))
    verdict = "met" if growth < 10 else "MISSED"
    print(
        f"# growth {first[0]:,} -> {last[0]:,} executions: {growth:+.1f} % "
        f"(target < 10 %: {verdict}); {last[0] / last[2]:.0f} executions/s overall"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="executions in all")
    parser.add_argument("--first", type=int, default=100, help="executions before the baseline")
    parser.add_argument("--every", type=int, default=1000, help="executions between readings")
    parser.add_argument("--in-flight", type=int, default=8, help="most executions at once")
    parser.add_argument("--max-seconds", type=float, default=1800, help="stop starting after")
    parser.add_argument("--isolation", default=None, help="thread or process (the default)")
    parser.add_argument("--tmpdir", default=None, help="where the temporary directory goes")
    args = parser.parse_args(argv)
    print(f"# daemon RSS, isolation {args.isolation or 'default'}; {benchkit.machine()}")
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
