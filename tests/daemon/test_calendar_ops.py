"""What an operator does with calendars, with the real daemon and real ``batchd ctl``
subprocesses (DESIGN §7): list a calendar's business and closing days before trusting it,
backfill business dates only, see what a waiting fire waits for, fire on a closing day; and
a fire waiting for another job across two nodes on one PostgreSQL repository."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batchd import BatchStatus, SqlJobRepository
from batchd.repository import TriggerStore
from tests.daemon.support import Control, Launch, control_config, wait_until
from tests.daemon.test_ctl import ctl, ok
from tests.daemon.test_daemon import DaemonProcess, Daemons
from tests.daemon.test_dependencies import JOBS, executions, fires, posting_schedule
from tests.daemon.test_nodes import executions_of, node_config
from tests.daemon.toml_text import table


def rows(table: str) -> list[str]:
    """The lines of a ``batchd ctl`` table, cells joined by one space."""
    return [
        " ".join(line.replace("│", " ").replace("┃", " ").split()) for line in table.splitlines()
    ]


def calendar_config(tmp: Path, extra: str = "") -> str:
    file = tmp / "closing-days.txt"
    file.write_text("# the bank's own closing days\n2026-04-08 Staff outing\n")
    target = table("calendars", name="target", holidays="ECB", file=file)
    return control_config(tmp, target + extra, jobs=JOBS)


def test_ctl_calendar_lists_business_and_closing_days_with_the_holidays_names(
    tmp_path: Path, launch: Launch
) -> None:
    socket = str(launch(calendar_config(tmp_path)).socket)
    table = ok(
        "calendar", "target", "--from", "2026-04-01", "--to", "2026-04-09", "--socket", socket
    )
    lines = rows(table)
    assert lines[0] == "calendar target from 2026-04-01 to 2026-04-09: 4 business day(s), 5 closed"
    assert "2026-04-02 Thu yes" in lines
    assert "2026-04-03 Fri closed Good Friday" in lines
    assert "2026-04-04 Sat closed Saturday" in lines
    assert "2026-04-06 Mon closed Easter Monday" in lines
    assert "2026-04-08 Wed closed Staff outing" in lines  # from the calendar's file

    listed = json.loads(
        ok(
            "calendar",
            "target",
            "--from",
            "2026-12-24",
            "--to",
            "2026-12-26",
            "--socket",
            socket,
            "--json",
        )
    )
    assert listed["days"] == [
        {"date": "2026-12-24", "business": True, "reason": None},
        {"date": "2026-12-25", "business": False, "reason": "Christmas Day"},
        {"date": "2026-12-26", "business": False, "reason": "Saturday"},
    ]
    # Without --to: a month from --from; without --from: from today.
    month = json.loads(
        ok("calendar", "target", "--from", "2026-02-01", "--socket", socket, "--json")
    )
    assert (month["to"], len(month["days"])) == ("2026-03-03", 31)
    today = json.loads(ok("calendar", "target", "--socket", socket, "--json"))
    assert today["from"] == dt.date.today().isoformat()

    unknown = ctl("calendar", "nope", "--socket", socket)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "batchd: NoSuchCalendar: no calendar named 'nope'"
    backwards = ctl(
        "calendar", "target", "--from", "2026-05-01", "--to", "2026-04-01", "--socket", socket
    )
    assert backwards.returncode == 1
    assert "'to' (2026-04-01) is before 'from' (2026-05-01)" in backwards.stderr
    decade = ctl(
        "calendar", "target", "--from", "2020-01-01", "--to", "2030-01-08", "--socket", socket
    )
    assert decade.returncode == 1
    assert "3661 dates is more than one request lists (3660)" in decade.stderr


def test_backfill_with_a_calendar_runs_its_business_dates_only(
    tmp_path: Path, launch: Launch
) -> None:
    launched = launch(calendar_config(tmp_path))
    socket = str(launched.socket)
    dates = ("--from", "2026-04-01", "--to", "2026-04-09", "--socket", socket)
    planned = ok("backfill", "file_import", *dates, "--calendar", "target", "--dry-run")
    assert "(business days of target): would start 4 date(s)" in planned
    planned_rows = rows(planned)
    assert "2026-04-03 skip (CLOSED: Good Friday)" in planned_rows
    assert "2026-04-08 skip (CLOSED: Staff outing)" in planned_rows
    assert "2026-04-09 run" in planned_rows

    unknown = ctl("backfill", "file_import", *dates, "--calendar", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "batchd: NoSuchCalendar: no calendar named 'nope'"

    started = json.loads(ok("backfill", "file_import", *dates, "--calendar", "target", "--json"))
    assert started["calendar"] == "target"
    assert started["dates"] == ["2026-04-01", "2026-04-02", "2026-04-07", "2026-04-09"]
    control = launched.connect()

    def done() -> list[str]:
        ran = executions(control, "file_import")
        return sorted(e["params"]["date"] for e in ran if e["status"] == "COMPLETED")

    wait_until(lambda: len(done()) == 4)
    assert done() == started["dates"]
    assert len(executions(control, "file_import")) == 4  # no closing day ran


def test_ctl_schedules_shows_the_calendar_and_what_a_waiting_fire_waits_for(
    tmp_path: Path, launch: Launch
) -> None:
    schedule = posting_schedule(timezone="UTC", calendar="target", wait_timeout="6h")
    socket = str(launch(calendar_config(tmp_path, schedule)).socket)
    fired = json.loads(ok("fire", "posting", "--socket", socket, "--json"))
    assert fired["outcome"] == "waiting"
    day = fired["params"]["date"]
    until = dt.datetime.fromisoformat(fired["fire_time"]) + dt.timedelta(hours=6)
    table = rows(ok("schedules", "--socket", socket))
    assert table[0].split() == [
        "SCHEDULE", "JOB", "TRIGGER", "CALENDAR", "STATE", "NEXT", "FIRE", "LAST", "FIRE",
        "OUTCOME", "WAITING",
    ]  # fmt: skip
    (row,) = [line for line in table if line.startswith("posting ")]
    local_until = until.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert " target active " in row
    assert f'{day}: after file_import {{"date":"{day}"}} until {local_until}' in row


def test_ctl_fire_on_a_closing_day_runs_and_says_so(tmp_path: Path, launch: Launch) -> None:
    # Yesterday, today and tomorrow (UTC) are closing days: whatever the clock says when
    # the fire is made, its business date is one of them.
    today = dt.datetime.now(dt.UTC).date()
    closed = [str(today + dt.timedelta(days=offset)) for offset in (-1, 0, 1)]
    every_day = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    inventory = table("calendars", name="inventory", weekdays=every_day, dates=closed)
    schedule = inventory + posting_schedule(timezone="UTC", calendar="inventory", after=None)
    launched = launch(control_config(tmp_path, schedule, jobs=JOBS))
    said = ok("fire", "posting", "--socket", str(launched.socket))
    assert "schedule posting fired: started, execution 1" in said
    assert "is not a business day of calendar inventory (closing day): run as asked" in said
    control = launched.connect()
    assert control.wait_for_status(1, "COMPLETED")["params"]["date"] in closed
    (row,) = fires(launched.database)
    assert (row["outcome"], row["job_execution_id"]) == ("started", 1)
    assert "run as asked" in row["message"]
    assert "fired by request: " in launched.daemon.output()


# ---------------------------------------------------------------- two nodes, PostgreSQL


@pytest.fixture
def eod_nodes(tmp_path: Path, pg_url: str, daemons: Daemons) -> Callable[..., DaemonProcess]:
    def start(name: str, extra: str, env: dict[str, str] | None = None) -> DaemonProcess:
        workdir = tmp_path / name
        workdir.mkdir()
        config = node_config(tmp_path, pg_url, name, extra).replace(
            '"tests.daemon.node_jobs", "tests.daemon.daemon_jobs"', JOBS.strip("[]")
        )
        return daemons.start(workdir, config, env)

    return start


@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_a_waiting_fire_starts_once_across_two_nodes(
    eod_nodes: Callable[..., DaemonProcess], pg_url: str, tmp_path: Path
) -> None:
    # One fire in the past, caught up at start-up and recorded waiting. node-a runs the
    # import and then, held at the claim by the failpoint, lets node-b see the import
    # complete (by its poll) and claim the fire first.
    at = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).replace(microsecond=0)
    schedule = posting_schedule(
        cron=None, interval="1h", start=at, end=at, catch_up="all", timezone="UTC"
    )
    a = eod_nodes("node-a", schedule, {"BATCHD_FAILPOINTS": "scheduler.before_wait_claim=sleep(5)"})
    b = eod_nodes("node-b", schedule)
    for daemon in (a, b):
        daemon.notify.wait_for("READY=1", timeout=30)
    store_of = SqlJobRepository(pg_url, upgrade=False)
    store = TriggerStore(store_of)
    try:
        wait_until(lambda: len(store.fires("posting")) == 1, 60, "the fire")
        (waiting,) = store.fires("posting")
        assert waiting["outcome"] == "waiting"
        day = at.date().isoformat()
        on_a = Control(tmp_path / "node-a.sock")
        imported = on_a.call("start", job="file_import", params={"date": day})
        on_a.wait_for_status(imported["id"], "COMPLETED")
        wait_until(lambda: store.fires("posting")[0]["job_execution_id"] is not None, 30, "start")
        (started,) = store.fires("posting")
        (posting,) = executions_of(pg_url, "posting")
        assert (started["outcome"], started["job_execution_id"]) == ("started", posting.id)
        assert (posting.node, posting.params) == ("node-b", {"date": day})
        # node-a saw the import complete too, and logs the fire it lost as taken elsewhere.
        lost = "elsewhere: what it waited for has completed; taken by node node-b"
        wait_until(lambda: lost in a.output(), 30, "node-a to lose the claim")
        wait_until(lambda: executions_of(pg_url, "posting")[0].status == BatchStatus.COMPLETED, 30)
        assert len(executions_of(pg_url, "posting")) == 1
        on_a.close()
    finally:
        store_of.dispose()


def test_an_interval_schedule_catches_up_from_its_start_with_its_first_fire() -> None:
    from batchd.daemon.schedule_entries import make_entry, missed_fire_times
    from batchd.daemon.settings import ScheduleSettings

    start = dt.datetime(2026, 4, 1, 9, 30, tzinfo=dt.UTC)
    settings = ScheduleSettings(
        name="hourly", job="posting", interval="1h", start=start, catch_up="all"
    )
    entry = make_entry(settings, "UTC", {})
    now = start + dt.timedelta(hours=2, minutes=5)
    assert missed_fire_times(entry, None, now) == [
        start,
        start + dt.timedelta(hours=1),
        start + dt.timedelta(hours=2),
    ]
    assert missed_fire_times(entry, start, now) == [
        start + dt.timedelta(hours=1),
        start + dt.timedelta(hours=2),
    ]
