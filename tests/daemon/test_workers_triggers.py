"""With the default isolation ("process", DESIGN §6) every way the daemon starts an
execution — a start, a schedule's fire, a file drop, a backfill, a restart on crash, a
partitioned step on threads or on processes — runs it in a worker process of its own (the
execution's owner pid is the worker's, not the daemon's), and it completes exactly once."""

from __future__ import annotations

import itertools
import signal
import sqlite3
from pathlib import Path
from typing import Any

from tests.daemon.process_tree import descendants
from tests.daemon.support import Launch, Launched, control_config, wait_until
from tests.daemon.worker_trigger_jobs import ITEMS

JOBS = '["tests.daemon.worker_trigger_jobs"]'


def _config(tmp: Path, on_crash: str = "none") -> str:
    # No isolation key: "process" is the default.
    inbox = tmp / "inbox"
    inbox.mkdir(exist_ok=True)
    extra = (
        '[[schedules]]\nname = "nightly"\njob = "work"\ninterval = "24h"\n'
        'start = 2100-01-01T00:00:00Z\nparams = { key = "{fire_time}", seconds = 3 }\n'
        f'on_crash = "{on_crash}"\n'
        f'[[watches]]\nname = "drops"\njob = "work"\ndirectory = "{inbox}"\n'
        'params = { key = "{path}" }\n'
    )
    return control_config(tmp, extra, jobs=JOBS)


def _executions(launched: Launched) -> list[dict[str, Any]]:
    with sqlite3.connect(launched.database) as conn:
        conn.row_factory = sqlite3.Row
        return [
            dict(row)
            for row in conn.execute(
                "SELECT id, job_name, status, owner_pid, instance_id, start_time, end_time"
                " FROM batch_job_execution ORDER BY id"
            )
        ]


def _ran_in_its_own_worker(launched: Launched, executions: list[dict[str, Any]]) -> None:
    """Owned by a process that is not the daemon, one execution at a time (a worker may
    take another once its execution has ended), each with the log file only a worker's
    output makes."""
    owners = [e["owner_pid"] for e in executions]
    assert launched.daemon.proc.pid not in owners
    for owner in set(owners):
        mine = [e for e in executions if e["owner_pid"] == owner]
        runs = sorted((e["start_time"], e["end_time"]) for e in mine)
        assert all(ended <= start for (_, ended), (start, _) in itertools.pairwise(runs)), runs
    for execution in executions:
        log = launched.socket.parent / "logs" / execution["job_name"] / f"{execution['id']}.log"
        assert log.exists(), log


def test_start_fire_drop_backfill_and_partitions_run_in_workers_once(
    launch: Launch, tmp_path: Path
) -> None:
    launched = launch(_config(tmp_path))
    control = launched.connect()
    started = control.call("start", job="work", params={"key": "started"})["id"]
    fired = control.call("fire", schedule="nightly")
    assert fired["outcome"] == "started"
    (tmp_path / "inbox" / "data.csv").write_text("1\n")
    span = {"from": "2026-11-01", "to": "2026-11-03"}
    control.call("backfill", job="two_steps", **span)
    split = {
        executor: control.call("start", job=f"split_{executor}")["id"]
        for executor in ("threads", "processes")
    }
    # While it runs, the process-partitioned execution is owned by a worker below the
    # daemon, and the partition processes are below that worker.
    running = control.wait_for_status(split["processes"], "STARTED", "COMPLETED", timeout=60)
    if running["status"] == "STARTED":
        owner = next(e for e in _executions(launched) if e["id"] == split["processes"])
        assert owner["owner_pid"] in descendants(launched.daemon.proc.pid)

    def all_ended() -> list[dict[str, Any]] | None:
        found = _executions(launched)
        ended = [e for e in found if e["status"] not in ("STARTING", "STARTED")]
        return found if len(found) == 8 and len(ended) == 8 else None

    executions = wait_until(all_ended, timeout=120, what="8 executions ended")
    assert isinstance(executions, list)
    assert {e["status"] for e in executions} == {"COMPLETED"}, executions
    jobs = sorted(e["job_name"] for e in executions)
    assert jobs == ["split_processes", "split_threads"] + ["two_steps"] * 3 + ["work"] * 3
    # Exactly once: one execution per instance (no trigger ran twice).
    assert len({e["instance_id"] for e in executions}) == 8
    assert started in [e["id"] for e in executions]
    assert fired["execution_id"] in [e["id"] for e in executions]
    _ran_in_its_own_worker(launched, executions)
    for executor, execution_id in split.items():
        steps = control.call("execution", id=execution_id)["steps"]
        parts = [s for s in steps if ":" in s["name"]]
        assert len(parts) == 2, (executor, steps)
        assert sum(s["write_count"] for s in parts) == ITEMS, (executor, parts)


def test_a_fire_whose_daemon_was_killed_is_restarted_in_a_worker_once(
    launch: Launch, tmp_path: Path
) -> None:
    config = _config(tmp_path, on_crash="restart")
    first = launch(config)
    control = first.connect()
    fired = control.call("fire", schedule="nightly")
    control.wait_for_status(fired["execution_id"], "STARTED")
    first.daemon.signal(signal.SIGKILL)  # its worker dies with it
    first.daemon.wait(30)

    second = launch(config)

    def restarted() -> list[dict[str, Any]] | None:
        found = _executions(second)
        return found if len(found) == 2 and found[1]["status"] == "COMPLETED" else None

    executions = wait_until(restarted, timeout=90, what="the fire restarted and completed")
    assert isinstance(executions, list)
    crashed, again = executions
    assert crashed["id"] == fired["execution_id"] and crashed["status"] == "FAILED"
    assert again["instance_id"] == crashed["instance_id"]
    assert again["owner_pid"] not in (first.daemon.proc.pid, second.daemon.proc.pid)
    assert again["owner_pid"] != crashed["owner_pid"]
    _ran_in_its_own_worker(second, [again])
