"""An operator's day with the real daemon and ``batchd ctl`` as subprocesses: why a run or a
reload failed, silent drops that are errors, a second daemon on a taken socket."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tests.daemon.support import (
    DaemonProcess,
    Launched,
    control_config,
    wait_until,
)
from tests.daemon.test_ctl import ctl, ctl_process, ok

from .test_ctl import Launch

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", re.MULTILINE)


def test_a_refused_reload_exits_non_zero_and_names_the_bad_key(
    launched: Launched, tmp_path: Path
) -> None:
    sock = str(launched.socket)
    launched.daemon.config_path.write_text(control_config(tmp_path, max_concurrent_jobs='"many"'))
    refused = ctl("reload", "--socket", sock)
    assert refused.returncode == 1
    assert refused.stderr.startswith("batchd: ReloadRefused: max_concurrent_jobs: ")
    assert "batchd keeps running the config it had" in refused.stderr
    launched.daemon.config_path.write_text(control_config(tmp_path))
    assert ok("reload", "--socket", sock).startswith("config reloaded: 0 schedules")


def test_log_lines_carry_their_time_unless_the_journal_adds_it(
    launch: Launch, launched: Launched, tmp_path: Path
) -> None:
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
    launched: Launched, tmp_path: Path
) -> None:
    sock = str(launched.socket)
    control = launched.connect()
    missing = tmp_path / "missing.txt"
    started = control.call("start", job="count_file", params={"file": str(missing)})
    control.wait_for_status(started["id"], "FAILED")
    table = ok("executions", "--socket", sock, env={"COLUMNS": "400"})
    [row] = [line for line in table.splitlines() if line.lstrip().startswith(str(started["id"]))]
    assert "FAILED" in row
    assert "step 'count' FAILED: FileNotFoundError: [Errno 2] No such file or directory" in row


def test_a_parameter_the_model_would_drop_is_refused(launched: Launched) -> None:
    sock = str(launched.socket)
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
    launch: Launch,
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


# ------------------------------------------------------------------ times and zones

ZONED = """
[[schedules]]
name = "eod"
job = "dated"
cron = "30 1 * * *"
timezone = "Europe/Berlin"
params = { date = "{fire_date}" }

[[schedules]]
name = "hourly"
job = "dated"
interval = "1h"
jitter = "30s"
paused = true
params = { date = "{fire_date}" }
"""


def test_ctl_shows_times_with_their_zone_and_durations_as_written(
    launch: Launch,
    tmp_path: Path,
) -> None:
    sock = str(launch(control_config(tmp_path, ZONED)).socket)
    utc = {"TZ": "UTC", "COLUMNS": "300"}
    rows = {
        line.split()[0]: line for line in ok("schedules", "--socket", sock, env=utc).splitlines()
    }
    # The Berlin schedule's next fire is 01:30 in Berlin, said so; never a bare 00:30.
    assert re.search(r"cron 30 1 \* \* \* .* \d{4}-\d\d-\d\d 01:30:00 CES?T ", rows["eod"])
    assert "00:30:00" not in rows["eod"]
    assert "interval 1h, jitter 30s" in rows["hourly"] and "1:00:00" not in rows["hourly"]
    purged = ok("purge", "--days", "1", "--dry-run", "--socket", sock, env=utc)
    assert purged.startswith("would purge 0 executions (0 step executions) and 0 instances")
    assert re.search(r"before \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(1 day ago\)", purged)
    assert ok("reload", "--socket", sock).strip() == "config reloaded: 2 schedules, 0 watches"
    nodes = ok("nodes", "--socket", sock, env=utc)
    assert "-0.000s" not in nodes and re.search(r"[+-]\d+\.\d{3}s", nodes)


def test_the_two_times_of_a_repeated_hour_read_differently() -> None:
    from batchd.ctl_render import local_time, signed_seconds

    # 2026-10-25: Berlin's clocks go back from 03:00 CEST to 02:00 CET.
    first = local_time("2026-10-25T00:30:00+00:00", "Europe/Berlin")
    second = local_time("2026-10-25T01:30:00+00:00", "Europe/Berlin")
    assert (first, second) == ("2026-10-25 02:30:00 CEST", "2026-10-25 02:30:00 CET")
    assert signed_seconds(-0.0) == signed_seconds(-0.0002) == "+0.000s"


# ------------------------------------------------------------------ following work

JOBS = '["tests.daemon.daemon_jobs", "tests.daemon.control_jobs", "tests.daemon.operator_day_jobs"]'


def lines_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "lines.jsonl"
    path.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(count)))
    return path


def test_start_follow_shows_progress_and_exits_with_the_outcome(
    launch: Launch,
    tmp_path: Path,
) -> None:
    sock = str(launch(control_config(tmp_path, jobs=JOBS)).socket)
    path = lines_file(tmp_path, 300)
    followed = ctl("start", "lines", "--param", f"file={path}", "--param", "delay=0.01",
                   "--follow", "--interval", "0.1", "--socket", sock)  # fmt: skip
    assert followed.returncode == 0, followed.stderr
    *progress, last = followed.stdout.splitlines()[1:]
    # Plain lines (stdout is a pipe): the running step with its rate, percentage and ETA.
    running = [line for line in progress if " STARTED: load: " in line]
    assert running, followed.stdout
    assert all(re.match(r"\d\d:\d\d:\d\d execution 1 of lines STARTED: ", line) for line in running)
    assert any(re.search(r"items/s, \d+% of [\d.]+ KB, ETA ", line) for line in running)
    assert re.fullmatch(r"execution 1 of lines COMPLETED after .*: 300 read, 300 written", last)

    failing = lines_file(tmp_path, 100)
    failed = ctl("start", "lines", "--param", f"file={failing}", "--param", "fail_at=50",
                 "--param", "delay=0", "--wait", "--socket", sock)  # fmt: skip
    assert failed.returncode == 3  # FAILED
    assert "execution 2 of lines FAILED after " in failed.stdout
    assert "ValueError: item 50 is bad" in failed.stdout and "second line" not in failed.stdout


def test_a_stopped_and_restarted_run_counts_the_instance_s_work(
    launch: Launch,
    tmp_path: Path,
) -> None:
    launched = launch(control_config(tmp_path, jobs=JOBS))
    sock = str(launched.socket)
    control = launched.connect()
    path = lines_file(tmp_path, 400)
    following = ctl_process("start", "lines", "--param", f"file={path}", "--param",
                                  "delay=0.01", "--follow", "--socket", sock)  # fmt: skip

    def read_by_the_first() -> int:
        found = control.call("executions", job="lines")["executions"]
        return sum(step["read_count"] for each in found for step in each["steps"])

    wait_until(lambda: read_by_the_first() > 100)
    assert ok("stop", "1", "--socket", sock)
    stdout, _ = following.communicate(timeout=60)
    assert following.returncode == 4  # STOPPED
    assert "execution 1 of lines STOPPED after " in stdout.splitlines()[-1]
    stopped = control.call("execution", id=1)
    done = stopped["steps"][0]["progress"]["done"]
    assert 0 < done < path.stat().st_size

    restarted = control.call("restart", id=1)["id"]
    wait_until(lambda: control.call("execution", id=restarted)["steps"])
    followed = ctl("execution", str(restarted), "--follow", "--interval", "0.1", "--socket", sock)
    assert followed.returncode == 0
    view = control.call("execution", id=restarted)
    load = view["steps"][0]
    # The restart read only the rest; the instance read everything once, over two runs.
    assert load["read_count"] < 400 and load["progress"]["start"] == done
    counted = view["instance"]["steps"]["load"]
    assert view["instance"]["executions"] == 2
    assert (counted["read_count"], counted["write_count"]) == (400, 400)
    assert re.search(
        r"STARTED: load: .* \(\d+ read, \d+ written over 2 executions\)", followed.stdout
    )


def test_follow_on_a_terminal_draws_a_bar(launch: Launch, tmp_path: Path) -> None:
    sock = str(launch(control_config(tmp_path, jobs=JOBS)).socket)
    path = lines_file(tmp_path, 200)
    # FORCE_COLOR makes rich take stdout for a terminal, as it is for a person.
    followed = ctl("start", "lines", "--param", f"file={path}", "--follow", "--interval", "0.1",
                   "--socket", sock, env={"FORCE_COLOR": "1"})  # fmt: skip
    assert followed.returncode == 0
    assert "━" in followed.stdout
    assert not re.search(r"^\d\d:\d\d:\d\d execution", followed.stdout, re.MULTILINE)


def test_backfill_follow_and_stop_as_one_unit(launch: Launch, tmp_path: Path) -> None:
    launched = launch(control_config(tmp_path, jobs=JOBS))
    sock = str(launched.socket)
    done = ctl("backfill", "slow_dated", "--from", "2026-11-01", "--to", "2026-11-04",
               "--max-concurrent", "2", "--params", '{"seconds": 0.2}', "--follow",
               "--interval", "0.05", "--socket", sock)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.endswith("backfill 1 of slow_dated running: 0 dates done, 2 running, 2 left")
               for line in lines)  # fmt: skip
    assert "backfill 1 of slow_dated done: 4 dates done, 0 running, 0 left" in lines

    following = ctl_process("backfill", "slow_dated", "--from", "2026-12-01", "--to",
                                  "2026-12-08", "--params", '{"seconds": 30}', "--follow",
                                  "--interval", "0.1", "--socket", sock)  # fmt: skip
    control = launched.connect()
    wait_until(lambda: [b for b in control.call("backfills")["backfills"] if b["running"]])
    listed = ok("backfills", "--socket", sock)
    assert "backfill 1 of slow_dated done: 4 dates done" in listed
    assert "backfill 2 of slow_dated running: 0 dates done, 2 running, 6 left" in listed
    assert ok("stop", "--backfill", "2", "--socket", sock)
    stdout, _ = following.communicate(timeout=60)
    assert following.returncode == 4, stdout  # stopped
    assert (
        "backfill 2 of slow_dated stopped: 2 dates done, 0 running, 0 left, 6 never started"
        in stdout
    )
