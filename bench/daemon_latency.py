"""Trigger latency and ``executions`` round trip of the real daemon (``batchd run``).

Three cases, each against a daemon subprocess (SQLite repository, control socket and job
module in a temporary directory, metrics off):

- **file drop -> STARTED**: a file written under a hidden name in the watched directory and
  renamed into place; latency = the execution's ``start_time`` in the repository minus the
  wall clock just before the rename. ``drop-staged``: the same, but the hidden file is
  written in a sibling directory, so that the watched directory sees only the arrival
  (IN_MOVED_TO) and not the IN_MOVED_FROM of a rename inside it (see bench/README.md).
- **fire -> STARTED**: ``fire`` over the control socket of an interval schedule (``24h``, so
  only the request fires it); one schedule per fire (``s000``, ``s001``...) because two fires
  of one schedule within a second are one fire. Latency = ``start_time`` minus the wall clock
  just before the request is sent.
- **executions round trip**: 100,000 completed executions (one step each) inserted directly
  into the repository before the daemon starts, then ``executions`` (default limit 50) sent
  over one connection; ``ping`` on the same connection as the floor of a round trip.

The trigger cases run once per ``--isolation`` (thread, then process: one daemon each).
Triggers are sent one at a time (the next after the previous one's execution has started).
The repository is read with ``sqlite3`` in read-only mode. ``daemon_rss.py`` imports the
daemon helpers of this file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import benchkit  # first: puts the repository root first on sys.path

JOB_MODULE = '''\
"""The benchmarks' job "noop": one tasklet step that does nothing, parameter ``key``."""

from pydantic import BaseModel

import batchd
from batchd import JobBuilder, StepBuilder, StepContext  # StepContext: worker_isolation.py's


class KeyParams(BaseModel):
    key: str


def nothing(_ctx: StepContext) -> None:
    """No work: what is measured is batchd's."""


batchd.register(
    JobBuilder("noop").params_model(KeyParams).step(StepBuilder("nothing").tasklet(nothing).build()).build()
)
'''


# ----------------------------------------------------------------------------- the daemon
class Daemon:
    """``python -m batchd.cli run --config F`` in ``tmp``, READY=1 awaited at start."""

    def __init__(
        self,
        tmp: Path,
        *,
        schedules: int = 0,
        watch: bool = False,
        max_jobs: int = 4,
        isolation: str | None = None,
    ) -> None:
        self.tmp = tmp
        self.database = tmp / "batchd.db"
        self.socket_path = tmp / "control.sock"
        self.drop_dir = tmp / "drop"
        (tmp / "bench_jobs.py").write_text(JOB_MODULE)
        # isolation: "thread" or "process" (None: the daemon's default, "process").
        lines = [f'isolation = "{isolation}"'] if isolation else []
        lines += [
            f'database_url = "sqlite:///{self.database}"',
            'jobs = ["bench_jobs"]',
            f'log_dir = "{tmp / "logs"}"',  # per-execution logs (isolation = "process")
            f"max_concurrent_jobs = {max_jobs}",
            'stop_grace = "5s"',
            "[control]",
            f'socket = "{self.socket_path}"',
            "[metrics]",
            "listen = ''",
        ]
        if watch:
            self.drop_dir.mkdir(exist_ok=True)
            lines += [
                "[[watches]]",
                'name = "drop"',
                'job = "noop"',
                f'directory = "{self.drop_dir}"',
                'pattern = "*.txt"',
                'params = { key = "{name}" }',
            ]
        for number in range(schedules):
            lines += [
                "[[schedules]]",
                f'name = "s{number:03d}"',
                'job = "noop"',
                'interval = "24h"',
                'params = { key = "{schedule}" }',
            ]
        self.config = tmp / "batchd.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log_path = tmp / "daemon.log"
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(self.notify_path),
            "PYTHONPATH": os.pathsep.join([str(self.tmp), str(benchkit.REPO_ROOT)]),
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "batchd.cli", "run", "--config", str(self.config)],
                cwd=benchkit.REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if "READY=1" in self.notify.recv(4096).decode().splitlines():
                    return self
            except TimeoutError:
                self.stop()
                raise RuntimeError(f"no READY=1; log:\n{self.log_path.read_text()}") from None

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()

    def rss_kib(self) -> int:
        """VmRSS of the daemon, KiB."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for text in status:
                if text.startswith("VmRSS:"):
                    return int(text.split()[1])
        raise RuntimeError("no VmRSS")


class Client:
    """One connection to the control socket: JSON lines."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.buffer = b""

    def send(self, op: str, **args: Any) -> None:
        self.sock.sendall(json.dumps({"v": 1, "op": op, **args}).encode() + b"\n")

    def receive(self) -> Any:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("the daemon closed the connection")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        response = json.loads(line)
        if not response["ok"]:
            raise RuntimeError(f"error response: {response['error']}")
        return response["result"]

    def call(self, op: str, **args: Any) -> Any:
        self.send(op, **args)
        return self.receive()

    def close(self) -> None:
        self.sock.close()


class Repository:
    """The daemon's SQLite file, read-only (nothing batchd caches)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)

    def scalar(self, sql: str, *args: Any) -> Any:
        row = self.conn.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def wait_started(self, after_id: int, timeout: float = 10) -> tuple[int, float]:
        """(id, start_time as epoch seconds) of the first execution with an id above
        ``after_id`` once its start_time is set."""
        deadline = time.monotonic() + timeout
        sql = (
            "SELECT id, start_time FROM batch_job_execution WHERE id > ? "
            "AND start_time IS NOT NULL ORDER BY id LIMIT 1"
        )
        while time.monotonic() < deadline:
            row = self.conn.execute(sql, (after_id,)).fetchone()
            if row is not None:
                return row[0], epoch(row[1])
            time.sleep(0.001)
        raise RuntimeError(f"no execution after {after_id} started in {timeout} s")

    def close(self) -> None:
        self.conn.close()


def epoch(stored: str) -> float:
    """A repository timestamp (naive UTC text) as epoch seconds."""
    return datetime.fromisoformat(stored).replace(tzinfo=UTC).timestamp()


# ----------------------------------------------------------------------------- statistics
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(label: str, ms: Sequence[float], target: float | None) -> list[Any]:
    p99 = percentile(ms, 99)
    verdict = "-" if target is None else f"< {target:g} {'met' if p99 < target else 'MISSED'}"
    return [
        label,
        len(ms),
        f"{statistics.median(ms):.1f}",
        f"{percentile(ms, 90):.1f}",
        f"{p99:.1f}",
        f"{max(ms):.1f}",
        verdict,
    ]


HEADERS = ["case", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "p99 target"]


# ----------------------------------------------------------------------------- the cases
def file_drops(
    daemon: Daemon, repo: Repository, n: int, staged: str = "", gap: float = 0.0
) -> list[float]:
    """Drops ``f{staged}0000.txt``...; each written under a hidden name in the watched
    directory (``staged=""``) or in a sibling directory (``staged="s"``), then renamed."""
    latencies = []
    last_id = repo.scalar("SELECT coalesce(max(id), 0) FROM batch_job_execution")
    staging = daemon.drop_dir if not staged else daemon.tmp / "staging"
    staging.mkdir(exist_ok=True)
    for number in range(n):
        time.sleep(gap)
        name = f"f{staged}{number:04d}.txt"
        hidden = staging / f".{name}.tmp"
        hidden.write_text(f"{number}\n")
        t0 = time.time()
        os.rename(hidden, daemon.drop_dir / name)
        last_id, started = repo.wait_started(last_id)
        latencies.append((started - t0) * 1000)
    return latencies


def fires(daemon: Daemon, repo: Repository, n: int) -> list[float]:
    latencies = []
    client = Client(daemon.socket_path)
    try:
        client.call("ping")
        for number in range(n):
            t0 = time.time()
            result = client.call("fire", schedule=f"s{number:03d}")
            if result["outcome"] != "started":
                raise RuntimeError(f"fire s{number:03d}: {result}")
            execution_id = result["execution_id"]
            _, started = repo.wait_started(execution_id - 1)
            latencies.append((started - t0) * 1000)
    finally:
        client.close()
    return latencies


def fill_repository(database: Path, count: int) -> None:
    """``count`` completed executions of ``noop``, one instance and one step each."""
    from sqlalchemy import create_engine, insert

    from batchd.repository import SqlJobRepository
    from batchd.repository.tables import job_execution, job_instance, step_execution

    url = f"sqlite:///{database}"
    SqlJobRepository(url).dispose()  # creates the schema
    engine = create_engine(url)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    batch = 20_000
    with engine.begin() as conn:
        for first in range(1, count + 1, batch):
            ids = range(first, min(count, first + batch - 1) + 1)
            instances, executions, steps = [], [], []
            for i in ids:
                created = base + timedelta(seconds=i)
                ended = created + timedelta(milliseconds=20)
                params = json.dumps({"key": f"k{i}"})
                instances.append(
                    {
                        "id": i,
                        "job_name": "noop",
                        "job_key": f"{i:064x}",
                        "params": params,
                        "create_time": created,
                        "version": 1,
                    }
                )
                executions.append(
                    {
                        "id": i,
                        "instance_id": i,
                        "job_name": "noop",
                        "params": params,
                        "status": "COMPLETED",
                        "exit_message": None,
                        "create_time": created,
                        "start_time": created,
                        "end_time": ended,
                        "last_updated": ended,
                        "owner_host": "bench",
                        "owner_pid": 1,
                        "heartbeat": None,
                        "version": 3,
                    }
                )
                steps.append(
                    {
                        "id": i,
                        "job_execution_id": i,
                        "step_name": "nothing",
                        "status": "COMPLETED",
                        "commit_count": 1,
                        "execution_context": "{}",
                        "exit_message": None,
                        "start_time": created,
                        "end_time": ended,
                        "last_updated": ended,
                        "version": 3,
                    }
                )
            conn.execute(insert(job_instance), instances)
            conn.execute(insert(job_execution), executions)
            conn.execute(insert(step_execution), steps)
    engine.dispose()


def round_trips(client: Client, n: int, op: str, **args: Any) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.call(op, **args)
        times.append((time.perf_counter() - start) * 1000)
    return times


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="triggers / requests per case")
    parser.add_argument("--rows", type=int, default=100_000, help="executions for the 3rd case")
    parser.add_argument(
        "--cases",
        default="drop,drop-staged,fire,executions",
        help="any of drop,drop-staged,fire,executions",
    )
    parser.add_argument(
        "--gap", type=float, default=0.0, help="seconds between file drops (default none)"
    )
    parser.add_argument(
        "--isolation",
        type=lambda s: s.split(","),
        default=["thread", "process"],
        help="the daemon's isolation for the trigger cases, one daemon each",
    )
    parser.add_argument("--tmpdir", default=None, help="where the temporary directories go")
    args = parser.parse_args(argv)
    cases = set(args.cases.split(","))
    print(f"# daemon latency, {benchkit.machine()}")
    rows: list[list[Any]] = []

    for isolation in args.isolation:
        if not cases & {"drop", "drop-staged", "fire"}:
            break
        with (
            tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp,
            Daemon(Path(tmp), schedules=args.n, watch=True, isolation=isolation) as daemon,
        ):
            repo = Repository(daemon.database)
            try:
                if "drop" in cases:
                    drops = file_drops(daemon, repo, args.n, gap=args.gap)
                    rows.append(summary(f"{isolation}: file drop -> STARTED", drops, 20))
                if "drop-staged" in cases:
                    drops = file_drops(daemon, repo, args.n, staged="s", gap=args.gap)
                    rows.append(summary(f"{isolation}: drop, staged -> STARTED", drops, 20))
                if "fire" in cases:
                    fired = fires(daemon, repo, args.n)
                    rows.append(summary(f"{isolation}: fire -> STARTED", fired, 20))
            finally:
                repo.close()
        print(f"# {isolation} done, load average {benchkit.load_average()}", flush=True)

    if "executions" in cases:
        with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
            database = Path(tmp) / "batchd.db"
            seconds, _ = benchkit.timed(lambda: fill_repository(database, args.rows))
            print(f"# {args.rows:,} executions inserted in {seconds:.1f} s")
            with Daemon(Path(tmp)) as daemon:
                client = Client(daemon.socket_path)
                try:
                    round_trips(client, 10, "executions")  # warm-up
                    listed = round_trips(client, args.n, "executions")
                    pings = round_trips(client, args.n, "ping")
                    shown = client.call("executions")["executions"]
                finally:
                    client.close()
            if len(shown) != 50 or shown[0]["id"] != args.rows:
                raise RuntimeError(f"unexpected executions answer: {len(shown)} items")
            rows.append(summary(f"executions (50 of {args.rows:,})", listed, 20))
            rows.append(summary("ping (floor)", pings, None))

    print(benchkit.table(HEADERS, rows))
    print(f"# load average after: {benchkit.load_average()}")


if __name__ == "__main__":
    main()
