"""Operations of the real daemon (`batchd run` as a subprocess): a backfill stops as one unit,
reloads never overlap, and the daemon's own crash windows (killed there with
BATCHD_FAILPOINTS) lose and duplicate nothing once it starts again."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from batchd import BatchStatus, SqlJobRepository
from batchd.repository import TriggerStore
from tests.daemon.support import (
    ROOT,
    DaemonProcess,
    Launch,
    Launched,
    control_config,
    wait_until,
)
from tests.support.processes import dead_owner

LONG = {"seconds": 60}  # a date that runs until it is stopped


def logged(launched: Launched | DaemonProcess, text: str) -> None:
    daemon = launched.daemon if isinstance(launched, Launched) else launched
    wait_until(lambda: text in daemon.output(), timeout=30, what=f"{text!r} in the log")


def started(control: Any, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` executions of slow_dated are STARTED; returns them."""

    def found() -> list[dict[str, Any]] | None:
        executions = control.call("executions", job="slow_dated")["executions"]
        running = [e for e in executions if e["status"] == "STARTED"]
        return running if len(running) == count else None

    result = wait_until(found, timeout=30)
    assert isinstance(result, list)
    return result


# ---------------------------------------------------------------------------- backfills


def test_stopping_the_job_of_a_backfill_ends_the_whole_backfill(launch: Launch) -> None:
    launched = launch()
    control = launched.connect()
    span = {"from": "2026-11-01", "to": "2026-11-05"}
    run = control.call("backfill", job="slow_dated", params=LONG, max_concurrent=1, **span)
    backfill = run["backfill"]
    assert isinstance(backfill, int)
    [first] = started(control, 1)

    result = control.call("stop", job="slow_dated")
    assert [e["id"] for e in result["stopped"]] == [first["id"]]
    [view] = result["backfills"]
    assert view["backfill"] == backfill and view["state"] == "stopped"
    logged(launched, f"backfill {backfill} of slow_dated stopped: 1 STOPPED, 4 never started")

    # The next date did not start: one execution in all, and it was STOPPED.
    executions = control.call("executions", job="slow_dated")["executions"]
    assert [(e["id"], e["status"]) for e in executions] == [(first["id"], "STOPPED")]
    [after] = control.call("stop", backfill=backfill)["backfills"]  # stopping again: no error
    assert after["done"] == [
        {"date": "2026-11-01", "execution_id": first["id"], "status": "STOPPED"}
    ]
    assert after["running"] == [] and after["left"] == []
    assert [item["date"] for item in after["not_started"]] == [
        "2026-11-02",
        "2026-11-03",
        "2026-11-04",
        "2026-11-05",
    ]
    assert all("stopped" in item["reason"] for item in after["not_started"])
    assert after["summary"] == "1 STOPPED, 4 never started"


def test_ctl_stop_backfill_stops_its_running_dates_and_starts_no_other(
    launch: Launch,
) -> None:
    launched = launch()
    control = launched.connect()
    span = {"from": "2026-12-01", "to": "2026-12-04"}
    backfill = control.call("backfill", job="slow_dated", params=LONG, **span)["backfill"]
    running = started(control, 2)  # max_concurrent defaults to 2

    stopped = ctl("stop", "--backfill", str(backfill), "--socket", str(launched.socket))
    assert stopped.returncode == 0, stopped.stderr
    assert f"backfill {backfill} of slow_dated stopped" in stopped.stdout
    assert "asked 2 execution(s) to stop" in stopped.stdout
    logged(launched, f"backfill {backfill} of slow_dated stopped: 2 STOPPED, 2 never started")
    executions = control.call("executions", job="slow_dated")["executions"]
    assert sorted((e["id"], e["status"]) for e in executions) == sorted(
        (e["id"], "STOPPED") for e in running
    )

    unknown = control.error("stop", backfill=backfill + 1)
    assert unknown["type"] == "NoSuchBackfill"
    assert control.error("stop", backfill=backfill, job="slow_dated")["type"] == "BadRequest"
    neither = ctl("stop", "--socket", str(launched.socket))
    assert neither.returncode == 2 and "--backfill" in neither.stderr


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchd.cli", "ctl", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


# ------------------------------------------------------------------------------ reloads


def test_a_sighup_and_a_ctl_reload_never_overlap(launch: Launch) -> None:
    # The failpoint holds the SIGHUP reload between reading the config and applying it,
    # long enough for the control socket's reload to arrive while it runs.
    launched = launch(env={"BATCHD_FAILPOINTS": "daemon.during_reload=sleep(3)"})
    control = launched.connect()
    launched.daemon.signal(signal.SIGHUP)
    logged(launched, "reload (SIGHUP): reading")
    assert control.call("reload")["accepted"] is True

    steps = re.findall(
        r"(reload|reloaded) \((SIGHUP|control socket)\):? ?(reading|waiting)?",
        launched.daemon.output(),
    )
    assert steps == [
        ("reload", "SIGHUP", "reading"),
        ("reload", "control socket", "waiting"),  # for the reload in progress to finish
        ("reloaded", "SIGHUP", ""),
        ("reload", "control socket", "reading"),  # the config only now: no edit is missed
        ("reloaded", "control socket", ""),
    ]


# ----------------------------------------------------------------- crash windows

RESTARTING = (
    '[[schedules]]\nname = "daily"\njob = "slow_dated"\ncron = "0 3 1 1 *"\n'
    'params = { date = "{fire_date}" }\non_crash = "restart"\n'
)
FIRE_TIME = datetime(2026, 1, 1, 3, tzinfo=UTC)


def crashed_fire(tmp: Path) -> int:
    """What a daemon killed while running a fire's job leaves: the fire, naming an
    execution STARTED by a process that is gone. Returns the execution's id."""
    import tests.daemon.control_jobs  # noqa: F401 - registers slow_dated
    from batchd.shortcuts import default_registry

    params = {"date": "2026-01-01", "seconds": 0.5}
    key = default_registry.get("slow_dated").parameters(params).job_key
    repo = SqlJobRepository(f"sqlite:///{tmp / 'batchd.db'}")
    try:
        execution, _ = repo.create_execution(
            job_name="slow_dated",
            job_key=key,
            identifying_params={"date": "2026-01-01"},
            params=params,
            owner=dead_owner(),
            decide=lambda last: None,
        )
        store = TriggerStore(repo, node=socket.gethostname())
        assert store.record_fire("daily", FIRE_TIME)
        store.set_fire_outcome("daily", FIRE_TIME, "started", execution.id)
    finally:
        repo.dispose()
    return execution.id


def history(tmp: Path) -> tuple[list[tuple[int, BatchStatus]], list[dict[str, Any]]]:
    """Every execution of slow_dated (oldest first) and every fire of "daily"."""
    repo = SqlJobRepository(f"sqlite:///{tmp / 'batchd.db'}")
    try:
        found = repo.list_executions(job_name="slow_dated", limit=100)
        return [(e.id, e.status) for e in reversed(found)], TriggerStore(repo).fires("daily")
    finally:
        repo.dispose()


def killed_at(tmp: Path, config: str, failpoint: str) -> None:
    """Run the daemon until the failpoint kills it."""
    daemon = DaemonProcess(tmp, config, {"BATCHD_FAILPOINTS": f"{failpoint}=kill"})
    try:
        assert daemon.wait(60) == -signal.SIGKILL, daemon.output()
    finally:
        daemon.stop()


def completes_once(launched: Launched, tmp: Path, crashed: int, executions: int) -> None:
    """The restarted daemon runs the fire's instance to COMPLETED in one more execution,
    the fire names it, and a further recovery pass restarts nothing."""
    control = launched.connect()
    ids = [execution_id for execution_id, _ in history(tmp)[0]]
    assert len(ids) == executions and ids[0] == crashed  # restarted at start-up, once
    control.wait_for_status(ids[-1], "COMPLETED")
    assert control.call("recover")["recovered"] == []
    runs, [fire] = history(tmp)
    assert [status for _, status in runs] == [BatchStatus.FAILED] * (executions - 1) + [
        BatchStatus.COMPLETED
    ]
    assert fire["outcome"] == "started" and fire["job_execution_id"] == ids[-1]


def test_killed_between_recovery_and_the_restart(launch: Launch, tmp_path: Path) -> None:
    config = control_config(tmp_path, RESTARTING)
    crashed = crashed_fire(tmp_path)
    killed_at(tmp_path, config, "daemon.after_recover")
    runs, [fire] = history(tmp_path)
    assert runs == [(crashed, BatchStatus.FAILED)] and fire["job_execution_id"] == crashed

    completes_once(launch(config), tmp_path, crashed, executions=2)


def test_killed_between_the_restart_and_moving_the_fire(launch: Launch, tmp_path: Path) -> None:
    config = control_config(tmp_path, RESTARTING)
    crashed = crashed_fire(tmp_path)
    killed_at(tmp_path, config, "daemon.after_crash_restart")
    runs, [fire] = history(tmp_path)
    assert runs[0] == (crashed, BatchStatus.FAILED) and len(runs) == 2
    assert fire["job_execution_id"] == crashed  # the restart exists; the fire does not know

    # The killed restart is recovered (FAILED) and the instance restarted once more.
    completes_once(launch(config), tmp_path, crashed, executions=3)


def test_killed_after_taking_over_a_dead_nodes_fire_claim(
    launch: Launch,
    tmp_path: Path,
) -> None:
    config = control_config(tmp_path, RESTARTING, lease='"2s"', recover_every='"0.5s"')
    repo = SqlJobRepository(f"sqlite:///{tmp_path / 'batchd.db'}")
    repo.clock = lambda: datetime.now(UTC) - timedelta(hours=1)  # claimed an hour ago
    assert TriggerStore(repo, node="gone").record_fire("daily", FIRE_TIME)
    repo.dispose()

    killed_at(tmp_path, config, "daemon.after_take_fire_claim")
    runs, [fire] = history(tmp_path)
    assert runs == [] and fire["outcome"] == "claimed" and fire["node"] == socket.gethostname()

    launched = launch(config)
    wait_until(lambda: history(tmp_path)[1][0]["outcome"] != "claimed", timeout=30)
    runs, [fire] = history(tmp_path)
    assert fire["outcome"] == "started" and [i for i, _ in runs] == [fire["job_execution_id"]]
    launched.connect().wait_for_status(fire["job_execution_id"], "COMPLETED")
    assert len(history(tmp_path)[0]) == 1
