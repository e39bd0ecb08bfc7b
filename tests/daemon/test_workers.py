"""Worker processes (DESIGN §6), with the real daemon, real workers and real signals: a job
that exits the process, segfaults, runs out of its memory limit or ignores a stop past its
timeout ends FAILED with the cause while a healthy job beside it completes and the daemon
answers throughout; logs per execution; nothing left running after the daemon ends."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon.process_tree import alive, descendants
from tests.daemon.support import Control, Launch, Launched, control_config, launch, wait_until

__all__ = ["launch"]

LIMITS = """
[limits]
memory_max = "200M"
[limits.jobs.ignores_stops]
timeout = "1s"
"""


def worker_config(tmp: Path, limits: str = LIMITS) -> str:
    return control_config(
        tmp,
        limits,
        jobs='["tests.daemon.worker_jobs"]',
        isolation='"process"',
        log_dir=f'"{tmp / "logs"}"',
        stop_grace='"2s"',
    )


def _running(
    launch: Launch, tmp_path: Path, seconds: float, *, run: int = 1, started: bool = True
) -> tuple[Launched, Control, int]:
    """A daemon with the worker jobs, and a ``healthy`` execution of ``seconds`` started
    (and STARTED, if ``started``)."""
    launched = launch(worker_config(tmp_path))
    control = launched.connect()
    running = control.call("start", job="healthy", params={"run": run, "seconds": seconds})["id"]
    if started:
        control.wait_for_status(running, "STARTED")
    return launched, control, running


STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


@pytest.mark.parametrize(
    ("job", "cause"),
    [
        ("exits", r"worker process \d+ exited with status 3"),
        ("segfaults", r"worker process \d+ killed by signal 11 \(SIGSEGV\)"),
        ("eats_memory", r"memory limit 200M exceeded"),
        ("ignores_stops", r"timed out after 1s"),
    ],
)
def test_a_crashing_job_fails_with_its_cause_and_the_rest_carries_on(
    launch: Callable[..., Launched], tmp_path: Path, job: str, cause: str
) -> None:
    launched = launch(worker_config(tmp_path))
    control = launched.connect()
    healthy = control.call("start", job="healthy", params={"run": 1, "seconds": 3})["id"]
    bad = control.call("start", job=job, params={"run": 1})["id"]
    failed = control.wait_for_status(bad, "FAILED", "COMPLETED", "STOPPED")
    assert failed["status"] == "FAILED"
    assert re.fullmatch(cause, failed["exit_message"]), failed["exit_message"]
    assert all(step["status"] == "FAILED" for step in failed["steps"]), failed["steps"]
    # The daemon answered throughout and still does; the healthy job was not touched.
    assert control.call("ping")
    done = control.wait_for_status(healthy, "COMPLETED", "FAILED", "STOPPED")
    assert done["status"] == "COMPLETED", done
    assert launched.daemon.proc.poll() is None
    # The failed run is restartable as any FAILED run.
    again = control.call("restart", job=str(bad))
    assert again["id"] > bad


def test_each_execution_runs_in_its_own_worker_process_that_owns_it(
    launch: Launch, tmp_path: Path
) -> None:
    launched, control, first = _running(launch, tmp_path, 0.1, started=False)
    second = control.call("start", job="healthy", params={"run": 2, "seconds": 0.1})["id"]
    for execution_id in (first, second):
        control.wait_for_status(execution_id, "COMPLETED")
    logs = [
        (tmp_path / "logs" / "healthy" / f"{execution_id}.log").read_text()
        for execution_id in (first, second)
    ]
    pids = {int(text.split("healthy starts in process ")[1].split()[0]) for text in logs}
    assert len(pids) == 2 and launched.daemon.proc.pid not in pids
    with sqlite3.connect(launched.database) as conn:
        owners = {
            row[0]
            for row in conn.execute(
                "SELECT owner_pid FROM batch_job_execution WHERE id IN (?, ?)", (first, second)
            )
        }
    assert owners == pids
    # Its output, with its log records, is in its log file and in the daemon's log.
    assert "healthy run 1 working for 0.1s" in logs[0]
    assert "healthy done" in logs[0]
    assert re.match(STAMP, logs[0])  # the worker's own time, in its file
    wait_until(lambda: f"execution {first}: healthy done" in launched.daemon.output())
    # In the daemon's log a log record's line carries the daemon's time, not the worker's
    # as well.
    [line] = [
        line
        for line in launched.daemon.output().splitlines()
        if f"execution {first}: " in line and "healthy run 1 working" in line
    ]
    assert len(re.findall(STAMP, line)) == 1, line


@pytest.mark.parametrize(("limits", "reused"), [("", True), (LIMITS, False)])
def test_a_worker_runs_the_next_execution_once_its_own_has_ended_unless_memory_limited(
    launch: Callable[..., Launched], tmp_path: Path, limits: str, reused: bool
) -> None:
    launched = launch(worker_config(tmp_path, limits))
    control = launched.connect()
    logs = {}
    for run in (1, 2, 3):
        ran = control.call("start", job="healthy", params={"run": run, "seconds": 0.1})["id"]
        control.wait_for_status(ran, "COMPLETED")
        wait_until(lambda ran=ran: control.call("log", id=ran)["ended"])
        logs[run] = (tmp_path / "logs" / "healthy" / f"{ran}.log").read_text()
    pids = [int(text.split("healthy starts in process ")[1].split()[0]) for text in logs.values()]
    # A warm worker took a later execution (one at a time); one with a memory limit never
    # does (an rlimit cannot be raised again).
    assert (len(set(pids)) < 3) is reused, pids
    for run, text in logs.items():  # each log file holds its own execution's output only
        assert text.count("healthy starts in process") == 1 and f"run {run} working" in text


def test_a_chunk_job_killed_mid_run_restarts_after_its_last_commit(
    tmp_path: Path, launch: Callable[..., Launched]
) -> None:
    marker = tmp_path / "crashed"
    out = tmp_path / "items.jsonl"
    env = {"WORKER_JOBS_CRASH_MARKER": str(marker), "WORKER_JOBS_OUT": str(out)}
    launched = launch(worker_config(tmp_path), env=env)
    control = launched.connect()
    crashed = control.call("start", job="items")["id"]
    failed = control.wait_for_status(crashed, "FAILED", "COMPLETED")
    assert failed["status"] == "FAILED" and "exited with status 3" in failed["exit_message"]
    assert marker.exists()
    restarted = control.call("restart", job=str(crashed))["id"]
    done = control.wait_for_status(restarted, "COMPLETED", "FAILED")
    assert done["status"] == "COMPLETED", done
    written = [json.loads(line)["n"] for line in out.read_text().splitlines()]
    assert written == list(range(60))
    # The restart read only what the crashed run had not committed (20 items: 2 chunks).
    assert done["steps"][0]["read_count"] == 40


def test_sigterm_stops_the_workers_and_leaves_no_process(launch: Launch, tmp_path: Path) -> None:
    launched, control, stoppable = _running(launch, tmp_path, 60)
    stubborn = control.call("start", job="ignores_stops", params={"run": 1})["id"]
    # Its step under way (a stop that came before would end it STOPPED without running it).
    wait_until(
        lambda: [s["status"] for s in control.call("execution", id=stubborn)["steps"]]
        == ["STARTED"]
    )
    daemon = launched.daemon.proc.pid
    below = descendants(daemon)
    assert len(below) >= 3  # the warm process and two workers (and a spare)
    launched.daemon.signal(signal.SIGTERM)
    assert launched.daemon.wait(30) == 0
    wait_until(lambda: not any(alive(pid) for pid in below))
    with sqlite3.connect(launched.database) as conn:
        statuses = dict(
            conn.execute(
                "SELECT id, status FROM batch_job_execution WHERE id IN (?, ?)",
                (stoppable, stubborn),
            ).fetchall()
        )
    assert statuses[stoppable] == "STOPPED"
    assert statuses[stubborn] == "FAILED"  # its timeout of 1s, or killed at the grace's end


def test_a_sigkilled_daemon_leaves_no_process(launch: Launch, tmp_path: Path) -> None:
    launched, _, _ = _running(launch, tmp_path, 60)
    below = descendants(launched.daemon.proc.pid)
    assert below
    launched.daemon.signal(signal.SIGKILL)
    launched.daemon.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in below))


def test_sighup_remakes_the_warm_process_without_touching_running_workers(
    launch: Launch, tmp_path: Path
) -> None:
    launched, control, running = _running(launch, tmp_path, 2)
    launched.daemon.signal(signal.SIGHUP)
    launched.daemon.notify.wait_for("RELOADING=1")
    later = control.call("start", job="healthy", params={"run": 2, "seconds": 0.1})["id"]
    assert control.wait_for_status(later, "COMPLETED", "FAILED")["status"] == "COMPLETED"
    assert control.wait_for_status(running, "COMPLETED", "FAILED")["status"] == "COMPLETED"


def _fd_links(pid: int) -> list[str]:
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            links.append(os.readlink(fd))
        except FileNotFoundError:  # closed since the listing
            continue
    return links


def _open_fds(pid: int) -> int:
    """The daemon's open sockets, pipes and pidfds: what a reload opens per warm process.
    Files are left out: the repository's connection pool may keep one more SQLite
    connection (the database and its WAL) after a busy moment, which is no leak."""
    return sum(not link.startswith("/") for link in _fd_links(pid))


def _pidfd_targets(pid: int) -> list[int]:
    """The processes the daemon holds a pidfd of (its fdinfo names the process)."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:[pidfd]":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except (FileNotFoundError, ProcessLookupError):  # closed since the listing
            continue
        targets += [int(line.split()[1]) for line in info.splitlines() if line.startswith("Pid:")]
    return targets


def _settled(pid: int, old: set[int]) -> bool:
    """The reload's new warm process and its spare, none of the ``old`` ones, and the
    daemon has taken the new spare in (holds its pidfd): the spare's fork is seen below the
    daemon before the daemon hears of it, and the old pair lingers a moment after READY."""
    below, held = set(descendants(pid)), _pidfd_targets(pid)
    return len(below) == 2 and not below & old and len(held) == 1 and set(held) <= below


def test_reloads_leave_the_daemon_no_more_open_files(
    launch: Callable[..., Launched], tmp_path: Path
) -> None:
    launched = launch(worker_config(tmp_path))
    daemon = launched.daemon

    def reload() -> None:
        old = set(descendants(daemon.proc.pid))
        daemon.notify.messages.clear()
        daemon.signal(signal.SIGHUP)
        daemon.notify.wait_for("RELOADING=1")
        daemon.notify.wait_for("READY=1")
        wait_until(lambda: _settled(daemon.proc.pid, old), what="the new warm process settled")

    reload()  # everything a first reload opens once (and keeps) is open from here on
    before = sorted(_fd_links(daemon.proc.pid))
    for _ in range(5):
        reload()
    wait_until(
        lambda: _open_fds(daemon.proc.pid) <= sum(not link.startswith("/") for link in before),
        what=f"the daemon's open files back to {before} (now {_fd_links(daemon.proc.pid)})",
    )
    control = launched.connect()
    ran = control.call("start", job="healthy", params={"run": 1, "seconds": 0.1})["id"]
    assert control.wait_for_status(ran, "COMPLETED", "FAILED")["status"] == "COMPLETED"


def test_limits_are_checked_naming_the_key(tmp_path: Path) -> None:
    from batchd.daemon.config import ConfigError, load_settings

    path = tmp_path / "bad.toml"
    path.write_text('[limits]\ntimeout = "soon"\n[limits.jobs.x]\nmemory_max = "12Q"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert "limits.timeout" in str(raised.value)
    assert "limits.jobs.x.memory_max" in str(raised.value)


def _ctl(launched: Launched, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchd.cli", "ctl", "--socket", str(launched.socket), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ctl_log_prints_an_executions_log_and_follows_it_to_its_end(
    launch: Launch, tmp_path: Path
) -> None:
    launched, control, running = _running(launch, tmp_path, 1, run=7, started=False)
    followed = _ctl(launched, "log", str(running), "--follow", "--interval", "0.1")
    assert followed.returncode == 0, followed.stderr
    assert "healthy run 7 working for 1s" in followed.stdout
    assert followed.stdout.rstrip().endswith("COMPLETED")
    assert control.call("log", id=running)["ended"] is True
    tail = _ctl(launched, "log", str(running), "--tail", "1")
    assert tail.stdout.count("\n") == 1 and "COMPLETED" in tail.stdout
    crashed = control.call("start", job="exits", params={"run": 7})["id"]
    control.wait_for_status(crashed, "FAILED")
    log = control.call("log", id=crashed)
    assert "about to exit" in log["text"] and log["ended"] is True
    rest = control.call("log", id=crashed, offset=log["offset"])
    assert rest["text"] == "" and rest["offset"] == log["offset"]
    assert control.error("log", id=99999)["type"] == "NoSuchJobExecution"


def test_purge_deletes_the_logs_of_what_it_deletes(
    launch: Callable[..., Launched], tmp_path: Path
) -> None:
    launched = launch(worker_config(tmp_path))
    control = launched.connect()
    old, recent = (
        control.call("start", job="healthy", params={"run": run, "seconds": 0.1})["id"]
        for run in (1, 2)
    )
    for execution_id in (old, recent):
        control.wait_for_status(execution_id, "COMPLETED")
    logs = {i: tmp_path / "logs" / "healthy" / f"{i}.log" for i in (old, recent)}
    wait_until(lambda: all(path.exists() for path in logs.values()))
    with sqlite3.connect(launched.database) as conn:  # the first run ended 30 days ago
        conn.execute(
            "UPDATE batch_job_execution SET end_time = datetime(end_time, '-30 days') WHERE id = ?",
            (old,),
        )
    control.call("purge", days=7, dry_run=True)
    assert logs[old].exists()  # a dry run deletes nothing
    control.call("purge", days=7)
    assert control.error("execution", id=old)["type"] == "NoSuchJobExecution"
    assert not logs[old].exists()
    assert logs[recent].exists()
    assert control.call("log", id=recent)["text"]
