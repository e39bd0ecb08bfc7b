"""The real daemon killed (SIGKILL) between two durable acts of a schedule's fire, then
started again: every date of the schedule runs to completion exactly once.

Each test starts a daemon whose schedule missed three daily fires (the repository says it
last fired three days ago), so start-up catch-up fires them, and ``BATCHD_FAILPOINTS`` kills
the daemon at the named window during the first one. A second daemon on the same database
must finish the job: catch-up goes on from the newest recorded fire, recovery FAILs the
executions whose process is gone (restarting them: ``on_crash = "restart"``), and a claim left
without a job is taken over once it is a lease old.
"""

from __future__ import annotations

import datetime as dt
import signal
from pathlib import Path

import pytest

from batchd import SqlJobRepository
from batchd.repository import TriggerStore
from tests.daemon.support import DaemonProcess, control_config, wait_until

UTC = dt.UTC


def schedule_config(tmp: Path, fire_time: dt.datetime) -> str:
    schedule = (
        '[[schedules]]\nname = "eod"\njob = "dated"\n'
        f'cron = "{fire_time.minute} {fire_time.hour} * * *"\ntimezone = "UTC"\n'
        'params = { date = "{fire_date}" }\ncatch_up = "all"\non_crash = "restart"\n'
    )
    return control_config(tmp, schedule, lease='"2s"', recover_every='"0.5s"')


def fire_rows(database: Path) -> list[dict[str, object]]:
    repository = SqlJobRepository(f"sqlite:///{database}")
    try:
        return TriggerStore(repository).fires("eod")
    finally:
        repository.dispose()


def completed_dates(database: Path) -> dict[str, list[str]]:
    """The statuses of the ``dated`` executions, by date."""
    repository = SqlJobRepository(f"sqlite:///{database}")
    try:
        by_date: dict[str, list[str]] = {}
        for execution in repository.list_executions(job_name="dated", limit=100):
            by_date.setdefault(execution.params["date"], []).append(execution.status.value)
        return by_date
    finally:
        repository.dispose()


@pytest.mark.parametrize(
    ("window", "first_fire", "executions"),
    [
        # the first missed fire claimed, its job not started
        ("scheduler.after_fire_record", "claimed", 0),
        # its execution created, the fire's row not naming it yet
        ("scheduler.after_job_start", "claimed", 1),
        # its job started and recorded; the next missed fire not claimed
        ("scheduler.after_catch_up_fire", "started", 1),
    ],
)
def test_a_kill_in_a_fire_leaves_every_date_to_run_once(
    tmp_path: Path, window: str, first_fire: str, executions: int
) -> None:
    # Today's fire was two hours ago: the daily fires of the last three days are missed.
    today = dt.datetime.now(UTC).replace(second=0, microsecond=0) - dt.timedelta(hours=2)
    days = [today - dt.timedelta(days=n) for n in (2, 1, 0)]
    database = tmp_path / "batchd.db"
    repository = SqlJobRepository(f"sqlite:///{database}")
    store = TriggerStore(repository)
    store.record_fire("eod", today - dt.timedelta(days=3))
    store.set_fire_outcome("eod", today - dt.timedelta(days=3), "started")
    repository.dispose()
    config = schedule_config(tmp_path, today)

    killed = DaemonProcess(tmp_path, config, {"BATCHD_FAILPOINTS": f"{window}=kill"})
    try:
        assert killed.wait(timeout=30) == -signal.SIGKILL, killed.output()
    finally:
        killed.stop()
    fires = fire_rows(database)
    assert [(f["fire_time"], f["outcome"]) for f in fires[1:]] == [(days[0], first_fire)]
    assert sum(len(s) for s in completed_dates(database).values()) == executions

    restarted = DaemonProcess(tmp_path, config)
    try:
        restarted.notify.wait_for("READY=1")
        expected = sorted(day.date().isoformat() for day in days)

        def all_completed() -> bool:
            statuses = completed_dates(database)
            return sorted(statuses) == expected and all("COMPLETED" in s for s in statuses.values())

        wait_until(all_completed, timeout=30, what=f"every date completed\n{restarted.output()}")
        statuses = completed_dates(database)
        # Exactly once: one COMPLETED execution a date (a crashed attempt stays FAILED).
        assert {date: s.count("COMPLETED") for date, s in statuses.items()} == dict.fromkeys(
            expected, 1
        )
        assert all(set(s) <= {"COMPLETED", "FAILED"} for s in statuses.values()), statuses
        fires = fire_rows(database)
        assert [f["fire_time"] for f in fires[1:]] == days  # one fire a date, none repeated
        assert "claimed" not in {f["outcome"] for f in fires}
    finally:
        restarted.stop()
