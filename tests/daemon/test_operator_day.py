"""An operator's day with the real daemon and ``batchd ctl`` as subprocesses: why a run or a
reload failed, silent drops that are errors, a second daemon on a taken socket."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.daemon.support import (
    DaemonProcess,
    Launched,
    control_config,
    launch,  # noqa: F401 - a fixture
    wait_until,
)
from tests.daemon.test_ctl import ctl, ok

from .test_ctl import Launch

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", re.MULTILINE)


def test_a_refused_reload_exits_non_zero_and_names_the_bad_key(
    launch: Launch,  # noqa: F811
    tmp_path: Path,
) -> None:
    launched = launch()
    sock = str(launched.socket)
    launched.daemon.config_path.write_text(control_config(tmp_path, max_concurrent_jobs='"many"'))
    refused = ctl("reload", "--socket", sock)
    assert refused.returncode == 1
    assert refused.stderr.startswith("batchd: ReloadRefused: max_concurrent_jobs: ")
    assert "batchd keeps running the config it had" in refused.stderr
    launched.daemon.config_path.write_text(control_config(tmp_path))
    assert ok("reload", "--socket", sock).startswith("config reloaded: 0 schedules")


def test_log_lines_carry_their_time_unless_the_journal_adds_it(
    launch: Launch,  # noqa: F811
    tmp_path: Path,
) -> None:
    launched = launch()
    assert STAMP.search(launched.daemon.output()), launched.daemon.output()[:300]
    launched.daemon.stop()
    # Under systemd, JOURNAL_STREAM names the stream stderr is: the journal stamps lines.
    log = tmp_path / "daemon.log"
    log.write_bytes(b"")
    info = os.stat(log)
    again = launch(env={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
    assert "INFO batchd" in again.daemon.output()
    assert not STAMP.search(again.daemon.output())


def test_failed_runs_show_their_exit_message_in_executions(
    launch: Launch,  # noqa: F811
    tmp_path: Path,
) -> None:
    launched = launch()
    sock = str(launched.socket)
    control = launched.connect()
    missing = tmp_path / "missing.txt"
    started = control.call("start", job="count_file", params={"file": str(missing)})
    control.wait_for_status(started["id"], "FAILED")
    table = ok("executions", "--socket", sock, env={"COLUMNS": "400"})
    [row] = [line for line in table.splitlines() if line.lstrip().startswith(str(started["id"]))]
    assert "FAILED" in row
    assert "step 'count' FAILED: FileNotFoundError: [Errno 2] No such file or directory" in row


def test_a_parameter_the_model_would_drop_is_refused(launch: Launch) -> None:  # noqa: F811
    sock = str(launch().socket)
    refused = ctl("start", "slow_dated", "--param", "date=2026-11-21", "--param", "colour=red",
                  "--socket", sock)  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith("batchd: InvalidJobParameters: ")
    assert "colour: no such parameter (SlowDateParams takes: date, seconds)" in refused.stderr
    assert "no executions" in ok("executions", "--socket", sock)


def test_a_misspelt_batchd_variable_is_a_config_error(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, control_config(tmp_path), {"BATCHD_MAX_CONCURENT_JOBS": "3"})
    try:
        assert daemon.wait(60) == 78
        assert (
            "BATCHD_MAX_CONCURENT_JOBS: unknown variable "
            "(did you mean BATCHD_MAX_CONCURRENT_JOBS?)" in daemon.output()
        )
        assert not (tmp_path / "batchd.db").exists()
    finally:
        daemon.stop()


def test_a_second_daemon_on_the_same_socket_is_refused_before_it_fires(
    launch: Launch,  # noqa: F811
    tmp_path: Path,
) -> None:
    first: Launched = launch()
    other = tmp_path / "second"
    other.mkdir()
    # A schedule every second: had the second daemon started its triggers, it would fire.
    every_second = (
        '[[schedules]]\nname = "often"\njob = "dated"\ninterval = "1s"\n'
        'params = { date = "{fire_date}" }\n'
    )
    config = control_config(other, every_second, socket_path=first.socket)
    second = DaemonProcess(other, config)
    try:
        assert second.wait(60) == 73
        assert (
            f"another process already listens on the control socket {first.socket}"
            in second.output()
        )
        assert not (other / "batchd.db").exists()  # it never opened its repository
    finally:
        second.stop()
    assert ok("ping", "--socket", str(first.socket)).startswith("batchd ")
    wait_until(lambda: first.socket.exists())
