"""`batchd ctl` as a real subprocess against the real daemon: tables for people, --json for
scripts, exit statuses and error messages."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.daemon.support import (
    ROOT,
    Launch,
    control_config,
    wait_until,
)

SCHEDULE = (
    '[[schedules]]\nname = "daily"\njob = "dated"\ncron = "0 3 * * *"\n'
    'params = { date = "{fire_date}" }\n'
)


Result = subprocess.CompletedProcess[str]


def ctl(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``batchd ctl ARGS`` (its stdout is a pipe: rich draws tables 200 columns wide)."""
    [result] = ctl_at_once((args, env))
    return result


def ctl_at_once(*commands: tuple[tuple[str, ...], dict[str, str] | None]) -> list[Result]:
    """Run several independent ``batchd ctl`` commands at the same time (each takes most
    of a second to import batchd); their results in order."""
    running = [ctl_process(*args, env=env) for args, env in commands]
    results = []
    for process in running:
        stdout, stderr = process.communicate(timeout=60)
        results.append(
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        )
    return results


def ctl_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``batchd ctl ARGS`` started, its output piped; without the environment's COLUMNS and
    BATCHD_CONFIG (plus ``env``)."""
    environ = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    environ.pop("BATCHD_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "batchd.cli", "ctl", *args],
        cwd=ROOT,
        env={**environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = ctl(*args, env=env)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json"))


def test_tables_json_and_errors(launch: Launch, tmp_path: Path) -> None:
    launched = launch()
    sock = str(launched.socket)
    control = launched.connect()

    ping, jobs_run = ctl_at_once(
        (("ping", "--socket", sock), None), (("jobs", "--socket", sock), None)
    )
    assert ping.returncode == 0 and "database ok" in ping.stdout
    jobs = jobs_run.stdout
    assert "JOB" in jobs and "RESTARTABLE" in jobs
    assert any(line.split()[:3] == ["dated", "│", "note"] for line in jobs.splitlines())

    started = ok("start", "dated", '{"date": "2026-11-01"}', "--socket", sock)
    assert started.startswith('execution 1 of dated {"date":"2026-11-01"}: START')
    second = as_json("start", "dated", "--param", "date=2026-11-02", "--socket", sock)
    assert second["id"] == 2 and second["params"] == {"date": "2026-11-02"}
    for execution_id in (1, 2):
        control.wait_for_status(execution_id, "COMPLETED")

    table = ok("executions", "--socket", sock)
    header, _, *rows = table.splitlines()
    assert header.split("┃") and [c.strip() for c in header.split("┃")] == [
        "ID",
        "JOB",
        "PARAMS",
        "STATUS",
        "NODE",
        "START",
        "DURATION",
        "PROGRESS / MESSAGE",
    ]
    assert [row.split("│")[0].strip() for row in rows] == ["2", "1"]
    assert all("COMPLETED" in row and "dated" in row for row in rows)
    assert {row.split("│")[4].strip() for row in rows} == {socket.gethostname()}

    # Group-level options work too; the status is case-insensitive.
    filtered = json.loads(
        ok("--json", "--socket", sock, "executions", "dated", "--status", "completed", "--limit=1")
    )
    assert [e["id"] for e in filtered["executions"]] == [2]

    detail = ok("execution", "1", "--socket", sock)
    assert "2026-11-01" in detail and "COMPLETED" in detail
    assert any(line.startswith("note") for line in detail.splitlines())

    config = str(launched.daemon.config_path)
    nowhere = tmp_path / "nowhere" / "control.sock"
    unknown, missing, usage, by_config, by_environment, absent = ctl_at_once(
        (("start", "nope", "{}", "--socket", sock), None),
        (("execution", "99", "--socket", sock, "--json"), None),
        (("purge", "--socket", sock), None),  # --days is required
        # The socket from the config file (--config, or BATCHD_CONFIG).
        (("ping", "--config", config, "--json"), None),
        (("ping",), {"BATCHD_CONFIG": config}),
        (("ping", "--socket", str(nowhere)), None),
    )
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.startswith("batchd: NoSuchJob: no job named 'nope'")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "batchd: NoSuchJobExecution: no job execution with id 99"
    assert usage.returncode == 2 and "--days" in usage.stderr
    assert by_config.returncode == 0
    assert json.loads(by_config.stdout)["pid"] == launched.daemon.proc.pid
    assert by_environment.returncode == 0 and "database ok" in by_environment.stdout
    assert absent.returncode == 69
    assert absent.stderr.startswith(f"batchd: SocketNotFound: no control socket at {nowhere}")


def test_progress_stop_restart_and_abandon(launch: Launch, tmp_path: Path) -> None:
    launched = launch()
    sock = str(launched.socket)
    control = launched.connect()
    numbers = tmp_path / "numbers.txt"
    numbers.write_text("".join(f"{n}\n" for n in range(1, 2001)))  # 20 s at 0.01 s a number
    execution = as_json("start", "count_file", "--param", f"file={numbers}", "--socket", sock)

    def committed() -> bool:
        steps = control.call("execution", id=execution["id"])["steps"]
        return bool(steps) and steps[0]["commit_count"] > 0

    wait_until(committed)
    [row] = ok("executions", "--socket", sock).splitlines()[2:]
    progress = row.split("│")[-1].strip()
    assert progress.startswith("count: ") and "items/s" in progress, row
    read, written = (int(progress.split()[i].replace(",", "")) for i in (1, 3))
    assert read >= written > 0

    stopped = ok("stop", "count_file", "--socket", sock)
    assert "asked 1 execution(s) to stop" in stopped and "STOPPING" in stopped
    control.wait_for_status(execution["id"], "STOPPED")
    assert "nothing running to stop" in ok("stop", str(execution["id"]), "--socket", sock)

    restarted = ok("restart", "count_file", "--socket", sock)
    assert "of count_file" in restarted and ": START" in restarted
    new_id = int(restarted.split()[1])
    assert "asked 1 execution(s) to stop" in ok("stop", str(new_id), "--socket", sock)
    control.wait_for_status(new_id, "STOPPED")
    abandoned = ok("abandon", str(new_id), "--socket", sock)
    assert abandoned.startswith(f"execution {new_id} of count_file") and "ABANDONED" in abandoned
    refused = ctl("restart", "count_file", "--socket", sock)
    assert refused.returncode == 1 and refused.stderr.startswith("batchd: JobRestartError: ")


def test_schedules_backfill_purge_reload_recover(launch: Launch, tmp_path: Path) -> None:
    launched = launch(extra=SCHEDULE)
    sock = str(launched.socket)
    control = launched.connect()

    schedules = ok("schedules", "--socket", sock)
    assert "daily" in schedules and "active" in schedules and "0 3 * * *" in schedules
    assert ok("pause", "daily", "--socket", sock).strip() == "schedule daily paused"
    assert "paused" in ok("schedules", "--socket", sock)
    fired = ok("fire", "daily", "--socket", sock)
    assert fired.startswith("schedule daily fired: started, execution ")
    assert ok("resume", "daily", "--socket", sock).strip() == "schedule daily resumed"
    missing = ctl("fire", "nightly", "--socket", sock)
    assert missing.returncode == 1 and "NoSuchSchedule" in missing.stderr

    plan = ok("backfill", "dated", "--from", "2026-11-01", "--to", "2026-11-03", "--dry-run",
              "--socket", sock)  # fmt: skip
    assert "would start 3 date(s), 2 at a time; 0 skipped" in plan
    assert [line.split()[0] for line in plan.splitlines()[3:]] == [
        "2026-11-01",
        "2026-11-02",
        "2026-11-03",
    ]
    run = ok("backfill", "dated", "--from", "2026-11-01", "--to", "2026-11-03",
             "--max-concurrent", "3", "--socket", sock)  # fmt: skip
    assert "starting 3 date(s), 3 at a time" in run

    def three_complete() -> bool:
        found = control.call("executions", job="dated", status="COMPLETED")["executions"]
        return len([e for e in found if e["params"]["date"].startswith("2026-11-0")]) == 3

    wait_until(three_complete)
    again = as_json("backfill", "dated", "--from", "2026-11-01", "--to", "2026-11-03",
                    "--dry-run", "--socket", sock)  # fmt: skip
    assert again["dates"] == [] and len(again["skipped"]) == 3

    purged, dry, recovered = ctl_at_once(
        (("purge", "--days", "90", "--socket", sock), None),
        (("purge", "--days", "90", "--dry-run", "--socket", sock, "--json"), None),
        (("recover", "--socket", sock), None),
    )
    assert purged.stdout.startswith("purged 0 executions (0 step executions) and 0 instances")
    assert json.loads(dry.stdout)["dry_run"] is True and json.loads(dry.stdout)["executions"] == 0
    assert recovered.returncode == 0 and "nothing to recover" in recovered.stdout
    assert ok("reload", "--socket", sock).strip() == "config reloaded: 1 schedule, 0 watches"
    launched.daemon.config_path.write_text(control_config(tmp_path, "[[schedules]]\nname = 1\n"))
    refused = ctl("reload", "--socket", sock)
    assert refused.returncode == 1 and refused.stderr.startswith("batchd: ReloadRefused: ")


def test_every_operation_has_a_handler_a_renderer_and_a_command() -> None:
    """The protocol's table is the one list of operations: the server's handlers, the
    renderers of ``batchd ctl``, its commands and the metrics' labels all follow it."""
    import batchd.ctl_render
    from batchd.cli_ctl import ctl as ctl_group
    from batchd.daemon.handlers import Handlers
    from batchd.daemon.metrics import CONTROL_OPS
    from batchd.daemon.protocol import OPERATIONS

    handlers = {name for name in vars(Handlers) if not name.startswith("_")}
    assert handlers == set(OPERATIONS)
    assert set(ctl_group.commands) == set(OPERATIONS)
    assert set(OPERATIONS) == CONTROL_OPS
    for op, operation in OPERATIONS.items():
        assert callable(getattr(batchd.ctl_render, operation.renderer, None)), op
        assert ctl_group.commands[op].help == operation.summary


HEAVY = (
    "sqlalchemy",
    "pydantic",
    "apscheduler",
    "batchd.engine",
    "batchd.repository",
    # Not heavy, but a third of the client's start-up, and it reads only statuses.
    "batchd.interfaces",
    "batchd.model.records",
    "batchd.model.context",
)


def test_ctl_sends_a_line_without_importing_the_heavy_modules(launch: Launch) -> None:
    launched = launch()
    script = (
        "import json, sys\n"
        "from batchd.cli import main\n"
        "main(['ctl', '--socket', sys.argv[1], 'ping'], standalone_mode=False)\n"
        f"print(json.dumps(sorted(name for name in {HEAVY!r} if name in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(launched.socket)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    pong, imported = result.stdout.strip().splitlines()
    assert "database ok" in pong
    assert json.loads(imported) == []
