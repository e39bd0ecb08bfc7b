"""The real daemon (`batchd run`) as a subprocess: systemd notifications, signals, reload,
recovery at start-up."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from batchd import BatchStatus, JobOperator, SqlJobRepository
from tests.daemon.process_tree import descendants
from tests.support.processes import dead_owner

ROOT = Path(__file__).resolve().parents[2]


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float = 60) -> list[str]:
        """Collect datagrams until one holds ``line``; returns that datagram's lines. (A
        start-up takes 12-20 s at a load average of 10 on two cores.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(data)
            if line in data.splitlines():
                return data.splitlines()
        raise AssertionError(f"no {line!r} from the daemon; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


class DaemonProcess:
    def __init__(self, tmp: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.config_path = tmp / "batchd.toml"
        self.config_path.write_text(config)
        self.notify = NotifySocket(tmp / f"notify-{time.monotonic_ns()}.sock")
        self.log_path = tmp / "daemon.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.workdir = tmp / "workdir"
        self.workdir.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchd.cli", "run", "--config", str(self.config_path)],
            # A directory of its own in the test's: what the daemon keeps relative to its
            # working directory (per-execution logs, log_dir = "logs") stays out of the
            # checkout, and the test's other files are not under it (a path parameter may
            # not lead out of the working directory).
            cwd=self.workdir,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                ),
                "NOTIFY_SOCKET": str(self.notify.path),
                **(env or {}),
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.notify.close()


class Daemons:
    """The daemons one test starts; the ``daemons`` fixture stops each at the test's end."""

    def __init__(self) -> None:
        self.started: list[DaemonProcess] = []

    def start(self, tmp: Path, config: str, env: dict[str, str] | None = None) -> DaemonProcess:
        """``batchd run`` with ``config``, in ``tmp`` (its config, log and working directory)."""
        daemon = DaemonProcess(tmp, config, env)
        self.started.append(daemon)
        return daemon


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    running = Daemons()
    yield running
    for daemon in running.started:
        daemon.stop()


@pytest.fixture
def start_daemon(tmp_path: Path, daemons: Daemons) -> Callable[..., DaemonProcess]:
    return functools.partial(daemons.start, tmp_path)


def config(tmp: Path, extra: str = "", **settings: str) -> str:
    values = {
        "database_url": f'"sqlite:///{tmp / "batchd.db"}"',
        "jobs": '["tests.daemon.daemon_jobs"]',
        "stop_grace": '"5s"',
        "heartbeat": '"0.5s"',
        "lease": '"5s"',
        **settings,
    }
    lines = [f"{key} = {value}" for key, value in values.items()]
    lines += ["[control]", f'socket = "{tmp / "control.sock"}"', "[metrics]", "listen = ''"]
    return "\n".join(lines) + "\n" + extra


def watch(tmp: Path, name: str = "numbers", job: str = "count_file") -> str:
    directory = tmp / f"drop-{name}"
    directory.mkdir(exist_ok=True)
    return (
        f'[[watches]]\nname = "{name}"\njob = "{job}"\ndirectory = "{directory}"\n'
        f'pattern = "*.txt"\nparams = {{ file = "{{path}}" }}\nstable_for = "0.2s"\n'
    )


def drop(directory: Path, name: str, numbers: range) -> None:
    partial = directory / f".{name}.tmp"
    partial.write_text("".join(f"{n}\n" for n in numbers))
    partial.rename(directory / name)  # appears atomically, as a well-behaved sender does


def wait_until(predicate: Callable[[], object], timeout: float = 15, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" if what else "condition not met in time")


def executions(tmp: Path, job: str | None = None) -> list[object]:
    repo = SqlJobRepository(f"sqlite:///{tmp / 'batchd.db'}")
    try:
        return list(repo.list_executions(job_name=job, limit=100))
    finally:
        repo.dispose()


def test_bad_config_exits_78_naming_the_key(
    tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = start_daemon(config(tmp_path, colour='"blue"'))
    assert daemon.wait(30) == 78
    assert "colour" in daemon.output()


def test_systemd_notifications(tmp_path: Path, start_daemon: Callable[..., DaemonProcess]) -> None:
    daemon = start_daemon(config(tmp_path), env={"WATCHDOG_USEC": "400000"})
    ready = daemon.notify.wait_for("READY=1")
    assert any(line.startswith("STATUS=") for line in ready)
    daemon.notify.wait_for("WATCHDOG=1")
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("RELOADING=1")
    daemon.notify.wait_for("READY=1")
    daemon.signal(signal.SIGTERM)
    stopping = daemon.notify.wait_for("STOPPING=1")
    assert any(line.startswith("STATUS=SIGTERM") for line in stopping)
    assert daemon.wait(30) == 0


def test_sigterm_stops_a_running_chunk_job_and_a_restart_completes_it(
    tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = start_daemon(config(tmp_path, watch(tmp_path)))
    daemon.notify.wait_for("READY=1")
    drop(tmp_path / "drop-numbers", "batch1.txt", range(1, 201))

    def committed() -> object:
        found = executions(tmp_path, "count_file")
        return found and found[0].step_executions and found[0].step_executions[0].commit_count

    wait_until(committed)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    stopped = executions(tmp_path, "count_file")[0]
    assert stopped.status == BatchStatus.STOPPED
    assert stopped.step_executions[0].status == BatchStatus.STOPPED
    assert "stopping" in daemon.output().lower()

    import tests.daemon.daemon_jobs
    from batchd.shortcuts import default_registry

    url = f"sqlite:///{tmp_path / 'batchd.db'}"
    with JobOperator(SqlJobRepository(url), default_registry) as operator:
        restarted = operator.restart(stopped.id)
    assert restarted.status == BatchStatus.COMPLETED
    engine = create_engine(url)
    with engine.connect() as conn:
        numbers = list(conn.execute(select(tests.daemon.daemon_jobs.seen.c.number)).scalars())
    engine.dispose()
    assert sorted(numbers) == list(range(1, 201))


def test_a_second_sigterm_exits_at_once(
    tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = start_daemon(
        config(tmp_path, watch(tmp_path, "stubborn", "stubborn"), stop_grace='"60s"')
    )
    daemon.notify.wait_for("READY=1")
    drop(tmp_path / "drop-stubborn", "x.txt", range(1))
    wait_until(lambda: [e for e in executions(tmp_path, "stubborn") if e.status == "STARTED"])
    daemon.signal(signal.SIGTERM)
    daemon.notify.wait_for("STOPPING=1")
    begun = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 1
    assert time.monotonic() - begun < 5


def schedule(name: str, interval: str = "1s") -> str:
    return (
        f'[[schedules]]\nname = "{name}"\njob = "dated"\ninterval = "{interval}"\n'
        'params = { date = "{fire_date}" }\n'
    )


def test_sighup_changes_triggers_without_touching_a_running_job(
    tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    # Before: watch "numbers" and a schedule that would fire only in an hour.
    before = watch(tmp_path) + schedule("hourly", "1h")
    daemon = start_daemon(config(tmp_path, before), env={"BATCHD_TEST_DELAY": "0.01"})
    daemon.notify.wait_for("READY=1")
    drop(tmp_path / "drop-numbers", "long.txt", range(1, 301))
    wait_until(lambda: executions(tmp_path, "count_file"))
    # After: the watch and the schedule are gone; a new watch and a new schedule appear.
    after = watch(tmp_path, "more") + schedule("every_second")
    daemon.config_path.write_text(config(tmp_path, after))
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("READY=1")
    wait_until(lambda: executions(tmp_path, "dated"), timeout=10)  # the new schedule fires
    drop(tmp_path / "drop-more", "new.txt", range(1, 3))  # the new watch takes files
    wait_until(lambda: (tmp_path / "drop-more" / "processed" / "new.txt").exists())
    drop(tmp_path / "drop-numbers", "ignored.txt", range(1, 3))  # the old one does not
    # A bad config on SIGHUP keeps the running one.
    daemon.config_path.write_text(config(tmp_path, "[[schedules]]\nname = 1\n"))
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("READY=1")
    assert "reload refused" in daemon.output()
    long_run = executions(tmp_path, "count_file")[-1]  # the oldest: long.txt
    wait_until(
        lambda: [
            e
            for e in executions(tmp_path, "count_file")
            if e.id == long_run.id and e.status == "COMPLETED"
        ],
        timeout=30,
    )  # completed, never stopped
    assert all(e.status != "STOPPED" for e in executions(tmp_path, "count_file"))
    assert (tmp_path / "drop-numbers" / "ignored.txt").exists()
    assert "hourly" not in daemon.output().split("reloaded")[-1]
    assert daemon.proc.poll() is None
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_periodic_recovery_fails_executions_whose_owner_died(
    tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = start_daemon(config(tmp_path, recover_every='"0.5s"'))
    daemon.notify.wait_for("READY=1")
    orphan = orphan_execution(tmp_path)
    recovered = wait_until(
        lambda: [e for e in executions(tmp_path) if e.id == orphan and e.status == "FAILED"],
        timeout=10,
    )
    assert recovered


def orphan_execution(tmp_path: Path) -> int:
    """An execution left STARTING by a process of this host that is gone."""
    repo = SqlJobRepository(f"sqlite:///{tmp_path / 'batchd.db'}")
    execution, _ = repo.create_execution(
        job_name="dated",
        job_key=f"k{time.monotonic_ns()}",
        identifying_params={"date": "2026-11-21"},
        params={"date": "2026-11-21"},
        owner=dead_owner(),
        decide=lambda last: None,
    )
    repo.dispose()
    return execution.id


def test_start_up_recovers_executions_of_a_dead_process(
    tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    SqlJobRepository(f"sqlite:///{tmp_path / 'batchd.db'}").dispose()
    orphan = orphan_execution(tmp_path)
    daemon = start_daemon(config(tmp_path))
    daemon.notify.wait_for("READY=1")
    recovered = next(e for e in executions(tmp_path) if e.id == orphan)
    assert recovered.status == BatchStatus.FAILED
    assert "recovered" in (recovered.exit_message or "")


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is needed in CI")
        pytest.skip("systemd-analyze is not installed")
    batchd_bin = Path(sys.executable).with_name("batchd")
    unit = (ROOT / "systemd" / "batchd.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "ExecReload=" in unit
    installed = unit.replace("/opt/batchd/bin/batchd", str(batchd_bin))
    (tmp_path / "batchd.service").write_text(installed)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "batchd.service")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    timeout_stop = int(unit.split("TimeoutStopSec=")[1].split()[0])
    example = (ROOT / "etc" / "batchd.toml").read_text()
    grace = example.split("stop_grace")[1].split('"')[1]
    assert timeout_stop > int(grace.rstrip("s"))


def sqlite_owner_pid(database: Path, execution_id: int) -> int:
    with sqlite3.connect(database) as conn:
        [(pid,)] = conn.execute(
            "SELECT owner_pid FROM batch_job_execution WHERE id = ?", (execution_id,)
        ).fetchall()
    return int(pid)


def test_sigterm_stops_partitions_in_worker_processes_and_a_restart_completes(
    start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    from tests.daemon.support import Control

    daemon = start_daemon(config(tmp_path, jobs='["tests.daemon.partition_daemon_jobs"]'))
    daemon.notify.wait_for("READY=1")
    control = Control(tmp_path / "control.sock").open()
    started = control.call("start", job="split", params={"run": 1})

    def partitions_committed() -> bool:
        steps = control.call("execution", id=started["id"])["steps"]
        parts = [s for s in steps if ":" in s["name"]]
        return len(parts) == 2 and all(s["commit_count"] > 0 for s in parts)

    wait_until(partitions_committed, timeout=30)
    # The execution runs in a worker process (isolation = "process", the default), which
    # spawned the partition workers (and their resource tracker).
    owner = sqlite_owner_pid(tmp_path / "batchd.db", started["id"])
    assert owner != daemon.proc.pid and owner in descendants(daemon.proc.pid)
    workers = descendants(owner)
    assert len(workers) >= 2

    # SIGTERM reaches the partitions as a stop (the workers ignore the signal itself).
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    [execution] = executions(tmp_path, "split")
    assert execution.status == BatchStatus.STOPPED
    assert {s.step_name: s.status for s in execution.step_executions} == {
        "work": BatchStatus.STOPPED,
        "work:0000": BatchStatus.STOPPED,
        "work:0001": BatchStatus.STOPPED,
    }
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers), timeout=10)

    again = start_daemon(config(tmp_path, jobs='["tests.daemon.partition_daemon_jobs"]'))
    again.notify.wait_for("READY=1")
    control = Control(tmp_path / "control.sock").open()
    restarted = control.call("restart", id=started["id"])
    done = control.wait_for_status(restarted["id"], "COMPLETED", timeout=60)
    # The restart read only what the stopped partitions had not committed.
    read_before = sum(s.read_count for s in execution.step_executions if ":" in s.step_name)
    read_after = sum(s["read_count"] for s in done["steps"] if ":" in s["name"])
    assert 0 < read_before < 4000 and read_before + read_after == 4000
