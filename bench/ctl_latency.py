"""``batchd ctl ping`` against a real daemon, against ``python -c pass`` from the same
interpreter, in the same run (alternating), ``--repeat`` times each.

The daemon is the one of ``daemon_latency.py`` (``batchd run`` on a SQLite repository, its
control socket in a temporary directory, READY=1 awaited). The client is the installed
console script (``.venv/bin/batchd ctl --socket S ping``); its exit status must be 0. Also
printed: the modules the client imports (``-X importtime``, the heaviest first), since
that is what a client's start costs. Target (issue): ping <= 4 x ``python -c pass``.

    .venv/bin/python bench/ctl_latency.py
    .venv/bin/python bench/ctl_latency.py --repeat 41
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchkit
from daemon_latency import Daemon

TARGET = 4.0


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def import_times(command: list[str], top: int) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the top-level imports of ``command``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command[1:]],
        check=True,
        capture_output=True,
        text=True,
    )
    found = []
    for text in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", text)
        if match and len(match.group(2)) <= 1:  # top-level imports only
            found.append((int(match.group(1)), match.group(3)))
    return sorted(found, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    script = Path(sys.executable).with_name("batchd")
    with benchkit.scratch("batchd-ctl-") as tmp:
        with Daemon(tmp) as daemon:
            ping = [str(script), "ctl", "--socket", str(daemon.socket_path), "ping"]
            bare = [sys.executable, "-c", "pass"]
            wall(ping), wall(bare)  # warm the page cache
            times: dict[str, list[float]] = {"ping": [], "pass": []}
            for round_no in range(args.repeat):
                order = [("ping", ping), ("pass", bare)]
                for name, command in order if round_no % 2 == 0 else order[::-1]:
                    times[name].append(wall(command))
            imports = import_times([sys.executable, "-m", "batchd.cli", *ping[1:]], 12)
        ping_s, pass_s = statistics.median(times["ping"]), statistics.median(times["pass"])
        ratio = ping_s / pass_s
        print(f"# ctl_latency: median of {args.repeat}; {benchkit.machine()}")
        print(
            benchkit.table(
                ["command", "median ms", "min ms"],
                [
                    ["batchd ctl ping", f"{ping_s * 1000:.1f}", f"{min(times['ping']) * 1000:.1f}"],
                    ["python -c pass", f"{pass_s * 1000:.1f}", f"{min(times['pass']) * 1000:.1f}"],
                ],
            )
        )
        print(
            f"# ratio {ratio:.2f} ({'<=' if ratio <= TARGET else '>'} {TARGET}: "
            f"{'met' if ratio <= TARGET else 'MISSED'})"
        )
        print("# the client's heaviest top-level imports (cumulative ms):")
        for micros, module in imports:
            print(f"#   {micros / 1000:7.1f}  {module}")


if __name__ == "__main__":
    main()
