"""How long each page of the web console takes with 100,000 executions in the repository.

A SQLite repository is filled in bulk (plain INSERTs, one transaction): JOBS jobs run daily
for as many business dates as make ``--executions`` executions, each with one step, one
execution in 20 failed and restarted, the newest date of a few jobs still running; schedule
fires for the daily jobs and claimed files for a watch. The console is then served on a
loopback port exactly as the daemon serves it, and every page is loaded ``--repeat`` times
over HTTP, HTML and JSON; the script prints the median and the 95th percentile of each.

    .venv/bin/python bench/web_pages.py                 # 100,000 executions, 50 loads a page
    .venv/bin/python bench/web_pages.py --executions 10000 --repeat 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import benchkit  # noqa: F401  (puts this checkout first on sys.path)

from batchd import SqlJobRepository
from batchd.daemon.settings import Settings
from batchd.web import Pages, ReadOnlyStore, WebConsole

JOBS = 40
RUNNING_JOBS = 3
FAILED_EVERY = 20
FILES = 10_000
FAILURE = "step 'load' FAILED: ValueError: bad row 17"


def _time(moment: datetime) -> str:
    # As SQLAlchemy stores the repository's UTCDateTime in SQLite: naive UTC text.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def fill(path: Path, executions: int) -> dict[str, int]:
    """Bulk-insert the history; returns ids of a completed, a failed and a running run."""
    SqlJobRepository(f"sqlite:///{path}").dispose()  # the schema, by its migrations
    days = max(1, executions // JOBS)
    first_day = date(2026, 11, 30) - timedelta(days=days - 1)
    conn = sqlite3.connect(path)
    instances, runs, steps, fires = [], [], [], []
    execution_id = instance_id = 0
    ids: dict[str, int] = {}
    context = json.dumps({"GatedCounter.index": 5000})
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        params = json.dumps({"date": day.isoformat()}, separators=(",", ":"))
        key = hashlib.sha256(params.encode()).hexdigest()
        start = datetime(day.year, day.month, day.day, 1, 30, tzinfo=UTC) + timedelta(days=1)
        for job in range(JOBS):
            instance_id += 1
            name = f"job_{job:02d}"
            instances.append((instance_id, name, key, params, _time(start)))
            attempts = ["FAILED", "COMPLETED"] if instance_id % FAILED_EVERY == 0 else ["COMPLETED"]
            if offset == days - 1 and job < RUNNING_JOBS:
                attempts = ["STARTED"]
            for status in attempts:
                execution_id += 1
                ended = None if status == "STARTED" else _time(start + timedelta(minutes=5))
                message = FAILURE if status == "FAILED" else None
                runs.append(
                    (
                        execution_id,
                        instance_id,
                        name,
                        params,
                        status,
                        message,
                        _time(start),
                        _time(start),
                        ended,
                        _time(start),
                        "bench",
                        1,
                        _time(start),
                        1,
                    )
                )
                steps.append(
                    (
                        execution_id,
                        execution_id,
                        "load",
                        status,
                        5000,
                        5000,
                        5,
                        context,
                        message,
                        _time(start),
                        ended,
                        _time(start),
                        1,
                    )
                )
                ids[status] = execution_id
            if job < 10:
                fires.append(
                    (
                        f"daily_{job:02d}",
                        _time(start),
                        "started",
                        execution_id,
                        _time(start),
                        "bench",
                        day.isoformat(),
                    )
                )
    conn.executemany(
        "INSERT INTO batch_job_instance (id, job_name, job_key, params, create_time)"
        " VALUES (?, ?, ?, ?, ?)",
        instances,
    )
    conn.executemany(
        "INSERT INTO batch_job_execution (id, instance_id, job_name, params, status,"
        " exit_message, create_time, start_time, end_time, last_updated, owner_host,"
        " owner_pid, heartbeat, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        runs,
    )
    conn.executemany(
        "INSERT INTO batch_step_execution (id, job_execution_id, step_name, status,"
        " read_count, write_count, commit_count, execution_context, exit_message,"
        " start_time, end_time, last_updated, version)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        steps,
    )
    conn.executemany(
        "INSERT INTO batch_schedule_fire (schedule_name, fire_time, outcome, job_execution_id,"
        " recorded_at, node, business_date) VALUES (?, ?, ?, ?, ?, ?, ?)",
        fires,
    )
    now = datetime.now(UTC)
    conn.executemany(
        "INSERT INTO batch_trigger_file (watch_name, file_name, sha256, state,"
        " job_execution_id, claimed_at, node) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                "inbox",
                f"payments_{n:05d}.csv",
                f"{n:064x}",
                "started",
                n + 1,
                _time(now - timedelta(minutes=FILES - n)),
                "bench",
            )
            for n in range(FILES)
        ],
    )
    conn.execute(
        "INSERT INTO batch_node (name, host, pid, started_at, heartbeat, clock_offset_ms)"
        " VALUES ('bench', 'bench', 1, ?, ?, 0)",
        (_time(now), _time(now)),
    )
    conn.commit()
    conn.execute("ANALYZE")  # as a database that has lived for years would have statistics
    conn.close()
    return ids


def settings_for(path: Path, spool: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{path}",
        node="bench",
        schedules=[
            {
                "name": f"daily_{job:02d}",
                "job": f"job_{job:02d}",
                "cron": "30 1 * * *",
                "params": {"date": "{fire_date-1d}"},
                "deadline": "4h",
            }
            for job in range(10)
        ],
        watches=[{"name": "inbox", "job": "job_00", "directory": str(spool)}],
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--tmpdir", type=Path, default=None)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=options.tmpdir) as tmp:
        path = Path(tmp) / "batchd.db"
        began = time.perf_counter()
        ids = fill(path, options.executions)
        filled = time.perf_counter() - began
        count = sqlite3.connect(path).execute("SELECT count(*) FROM batch_job_execution")
        total = count.fetchone()[0]
        settings = settings_for(path, Path(tmp))
        console = WebConsole(
            Pages(ReadOnlyStore(settings.database_url), lambda: settings), "127.0.0.1:0"
        )
        console.start()
        base = f"http://127.0.0.1:{console.port}"
        pages = [
            "/",
            "/?format=json",
            f"/executions/{ids['COMPLETED']}",
            f"/executions/{ids['FAILED']}",
            f"/executions/{ids['STARTED']}",
            f"/executions/{ids['STARTED']}?format=json",
            "/schedules",
            "/watches",
            "/nodes",
        ]
        print(f"{total:,} executions ({JOBS} jobs), {FILES:,} files; filled in {filled:.1f} s")
        print(
            f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
        )
        print(f"{options.repeat} loads of each page, over HTTP on loopback (ms):\n")
        print("| page | median | p95 | max | CPU median |")
        print("|---|---:|---:|---:|---:|")
        worst = 0.0
        try:
            for page in pages:
                urllib.request.urlopen(base + page).read()  # warm: templates compiled
                times, cpu = [], []
                for _ in range(options.repeat):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    with urllib.request.urlopen(base + page) as response:
                        response.read()
                    times.append((time.perf_counter() - start) * 1000)
                    # Client and server threads of this process: what the page costs,
                    # whatever else the machine is doing.
                    cpu.append((time.process_time() - start_cpu) * 1000)
                worst = max(worst, percentile(times, 0.95))
                print(
                    f"| `{page}` | {statistics.median(times):.1f} | "
                    f"{percentile(times, 0.95):.1f} | {max(times):.1f} | "
                    f"{statistics.median(cpu):.1f} |"
                )
        finally:
            console.stop()
        print(
            f"\nslowest p95: {worst:.1f} ms (budget 200 ms); load average now "
            f"{os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main()
