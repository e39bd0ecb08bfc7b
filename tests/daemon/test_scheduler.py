"""Schedules: catch-up across restarts, outcomes of a fire, pause/resume/fire, reload,
crontab weekdays. Real SQLite repository, operator, TriggerStore and APScheduler; time comes
from an injected clock except in the one real-time test."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import batchd
from batchd import BatchStatus
from batchd.daemon.scheduler import (
    CATCH_UP_LIMIT,
    NoSuchSchedule,
    build_trigger,
    validate_schedule,
)
from batchd.daemon.settings import ScheduleSettings
from tests.daemon.scheduling import Clock, FireLog, Node, node_factory

UTC = dt.UTC
# A daily time twelve hours away from the wall clock: APScheduler (which runs on wall time)
# cannot fire it while a test runs, so only the injected clock decides what fires.
SAFE_HOUR = (dt.datetime.now(UTC).hour + 12) % 24
# "Today" for the catch-up tests: half an hour after that day's fire.
DAY = dt.datetime(2030, 3, 10, SAFE_HOUR, 30, tzinfo=UTC)


def daily(name: str = "eod", **overrides: Any) -> ScheduleSettings:
    values: dict[str, Any] = {
        "name": name,
        "job": "daily",
        "cron": f"0 {SAFE_HOUR} * * *",
        "params": {"date": "{fire_date-1d}"},
        "timezone": "UTC",
    }
    values.update(overrides)
    return ScheduleSettings(**values)


@pytest.fixture
def nodes(sqlite_url: str) -> Iterator[Callable[..., Node]]:
    yield from node_factory(sqlite_url, Clock(DAY))


def fire_at(day: dt.datetime) -> dt.datetime:
    """The daily schedule's fire time on ``day``."""
    return day.replace(hour=SAFE_HOUR, minute=0)


def instance_dates(node: Node, job: str = "daily") -> list[str]:
    return sorted(e.params["date"] for e in node.operator.list_executions(job, limit=1000))


# --------------------------------------------------------------------------------- catch-up


def test_catch_up_all_fires_each_missed_day_once_across_two_restarts(
    nodes: Callable[..., Node],
) -> None:
    schedule = daily(catch_up="all")
    first = nodes([schedule])
    first.store.record_fire("eod", fire_at(DAY - dt.timedelta(days=3)))  # last fire: D-3

    first.scheduler.start()
    executions = first.started_executions("eod")
    expected = [str((DAY - dt.timedelta(days=n)).date()) for n in (3, 2, 1)]  # fire_date - 1d
    assert sorted(e.params["date"] for e in executions) == expected
    assert all(e.status == BatchStatus.COMPLETED for e in executions)
    assert first.listener.fires == [("eod", "started")] * 3  # type: ignore[attr-defined]
    first.stop()

    # Restart on the same database at the same time, then later on the same day.
    for clock in (Clock(DAY), Clock(DAY + dt.timedelta(hours=12))):
        node = nodes([schedule], clock)
        node.scheduler.start()
        assert node.listener.fires == []  # type: ignore[attr-defined]
        node.stop()

    last = nodes([schedule])
    executions = last.operator.list_executions("daily", limit=100)
    assert sorted(e.params["date"] for e in executions) == expected  # one execution per date
    assert all(e.status == BatchStatus.COMPLETED for e in executions)
    fires = last.store.fires("eod")
    assert [f["fire_time"] for f in fires] == [
        fire_at(DAY - dt.timedelta(days=n)) for n in (3, 2, 1, 0)
    ]
    assert [f["outcome"] for f in fires] == ["claimed", "started", "started", "started"]


def test_catch_up_latest_fires_only_the_newest_missed_day(nodes: Callable[..., Node]) -> None:
    node = nodes([daily(catch_up="latest")])
    node.store.record_fire("eod", fire_at(DAY - dt.timedelta(days=3)))
    node.scheduler.start()
    executions = node.started_executions("eod")
    assert [e.params["date"] for e in executions] == [str((DAY - dt.timedelta(days=1)).date())]
    assert executions[0].status == BatchStatus.COMPLETED


def test_catch_up_none_and_never_fired_schedules_fire_nothing(
    nodes: Callable[..., Node],
) -> None:
    node = nodes([daily("off", catch_up="none"), daily("new", catch_up="all")])
    node.store.record_fire("off", fire_at(DAY - dt.timedelta(days=3)))
    node.scheduler.start()
    assert node.listener.fires == []  # type: ignore[attr-defined]
    assert node.operator.list_executions("daily") == []
    assert node.store.last_fire("new") is None  # a new schedule does not fire its past


def test_catch_up_keeps_the_newest_fires_beyond_the_limit(nodes: Callable[..., Node]) -> None:
    every_minute = ScheduleSettings(
        name="often", job="plain", cron="* * * * *", catch_up="all", timezone="UTC"
    )
    node = nodes([every_minute])
    node.store.record_fire("often", DAY - dt.timedelta(minutes=CATCH_UP_LIMIT + 500))
    missed = node.scheduler.missed_fire_times("often")
    assert len(missed) == CATCH_UP_LIMIT
    assert missed[-1] == DAY.replace(second=0)
    assert missed[0] == DAY.replace(second=0) - dt.timedelta(minutes=CATCH_UP_LIMIT - 1)


class AdvancingClock(Clock):
    """A clock that moves on a second with every fire: catching up takes time."""

    def on_schedule_fire(self, name: str, outcome: str) -> None:
        self.now += dt.timedelta(seconds=1)


def test_fires_that_come_due_while_catching_up_are_fired_up_to_the_last_at_end(
    nodes: Callable[..., Node],
) -> None:
    """An interval schedule of six fires, its last at exactly ``end``, caught up from its
    start. Each fire takes the clock a second on, so the last three come due while the
    first three are caught up; APScheduler (on wall time, long after ``end``) fires none."""
    start = dt.datetime(2020, 1, 6, 12, 0, tzinfo=UTC)
    end = start + dt.timedelta(seconds=5)
    schedule = ScheduleSettings(
        name="burst",
        job="plain",
        interval="1s",
        start=start,
        end=end,
        catch_up="all",
        params={"at": "{fire_time}"},
    )
    clock = AdvancingClock(start + dt.timedelta(seconds=2.5))
    node = nodes([schedule], clock, clock)
    node.scheduler.start()
    fire_times = [fire["fire_time"] for fire in node.store.fires("burst")]
    assert sorted(fire_times) == [start + dt.timedelta(seconds=n) for n in range(6)]
    assert max(fire_times) == end
    executions = node.started_executions("burst")
    assert sorted(e.params["at"] for e in executions) == [t.isoformat() for t in sorted(fire_times)]
    assert all(e.status == BatchStatus.COMPLETED for e in executions)
    # Started again later, it has nothing left to catch up.
    node.stop()
    again = nodes([schedule], Clock(end + dt.timedelta(hours=1)))
    assert again.scheduler.catch_up() == []


# ---------------------------------------------------------------------- real time


def test_interval_schedule_fires_on_wall_time(nodes: Callable[..., Node]) -> None:
    fires = FireLog()
    every_second = ScheduleSettings(
        name="tick", job="plain", interval="1s", params={"at": "{fire_time}", "by": "{schedule}"}
    )
    # Jitter delays the run, not its name: the fire time stays on the one-second grid.
    jittered = ScheduleSettings(
        name="jittered",
        job="plain",
        interval="1s",
        jitter="1s",
        params={"at": "{fire_time}", "by": "{schedule}"},
    )
    paused = ScheduleSettings(name="held", job="plain", interval="1s", paused=True)
    node = nodes([every_second, jittered, paused], lambda: dt.datetime.now(UTC), fires)
    deadline = time.monotonic() + 2.9
    node.scheduler.start()
    assert fires.wait_for(("tick", "started"), timeout=deadline - time.monotonic())
    assert fires.wait_for(("jittered", "started"), timeout=deadline - time.monotonic())
    for name in ("tick", "jittered"):
        execution = node.started_executions(name)[0]
        assert execution.status == BatchStatus.COMPLETED
        # Fire times are whole seconds in the schedule's time zone.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", execution.params["at"])
    assert "held" not in {name for name, _ in fires.fires}


# ------------------------------------------------------------------------ outcomes


def test_fire_of_a_completed_instance_is_counted_complete_not_error(
    nodes: Callable[..., Node],
) -> None:
    node = nodes([daily()])
    node.operator.start("daily", {"date": str((DAY - dt.timedelta(days=1)).date())})
    assert node.scheduler.fire("eod") == "complete"
    assert node.scheduler.fire_counts() == {("eod", "complete"): 1}
    assert node.listener.fires == [("eod", "complete")]  # type: ignore[attr-defined]
    (fire,) = node.store.fires("eod")
    assert fire["outcome"] == "complete" and fire["job_execution_id"] is None
    assert "COMPLETED" in fire["message"]
    assert len(node.operator.list_executions("daily")) == 1


def test_invalid_params_start_nothing_and_the_scheduler_keeps_working(
    nodes: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    node = nodes(
        [
            daily("bad_date", params={"date": "day {fire_date}"}),
            daily("bad_template", params={"date": "{no_such_variable}"}),
            daily("no_job", job="not_registered"),
            daily("good"),
        ]
    )
    node.scheduler.start()
    assert node.scheduler.fire("bad_date") == "invalid"
    assert node.scheduler.fire("bad_template") == "invalid"
    assert node.scheduler.fire("no_job") == "error"
    assert node.operator.list_executions() == []
    assert "date" in caplog.text and "no_such_variable" in caplog.text
    (fire,) = node.store.fires("bad_date")
    assert fire["outcome"] == "invalid" and "date" in fire["message"]

    assert node.scheduler.fire("good") == "started"
    (execution,) = node.started_executions("good")
    assert execution.status == BatchStatus.COMPLETED
    assert node.scheduler.describe()[3]["last_outcome"] == "started"


# ------------------------------------------------------------- pause, resume, fire


def test_pause_resume_and_fire_now(nodes: Callable[..., Node]) -> None:
    node = nodes([daily(), daily("held", paused=True)])
    scheduler = node.scheduler
    scheduler.start()
    assert scheduler.next_fire_times()["held"] is None
    next_eod = scheduler.next_fire_times()["eod"]
    assert next_eod is not None and next_eod.tzinfo is not None and next_eod.hour == SAFE_HOUR

    scheduler.pause("eod")
    assert scheduler.next_fire_times()["eod"] is None
    assert [s["paused"] for s in scheduler.describe()] == [True, True]
    scheduler.resume("eod")
    scheduler.resume("held")
    assert scheduler.next_fire_times()["eod"] == next_eod
    assert scheduler.next_fire_times()["held"] == next_eod

    # Fire now: runs even if paused; the same second again is the same fire.
    scheduler.pause("held")
    assert scheduler.fire("held") == "started"
    assert scheduler.fire("held") == "duplicate"
    (execution,) = node.started_executions("held")
    assert execution.params == {"date": str((DAY - dt.timedelta(days=1)).date())}
    described = {s["name"]: s for s in scheduler.describe()}["held"]
    assert described["last_fire"] == DAY.isoformat()
    assert described["last_outcome"] == "duplicate"
    assert described["trigger"] == f"cron 0 {SAFE_HOUR} * * *"

    with pytest.raises(NoSuchSchedule):
        scheduler.pause("nope")
    with pytest.raises(NoSuchSchedule):
        scheduler.fire("nope")


@pytest.mark.parametrize(
    ("trigger", "nominal"),
    [
        ({"cron": "30 1 * * *"}, dt.datetime(2030, 3, 10, 1, 30, tzinfo=UTC)),
        ({"interval": "15m"}, dt.datetime(2030, 3, 10, 1, 30, tzinfo=UTC)),
    ],
)
def test_a_jittered_run_is_recorded_at_its_nominal_fire_time(
    nodes: Callable[..., Node], trigger: dict[str, str], nominal: dt.datetime
) -> None:
    """Jitter delays a run by a random, sub-second-precise amount: two nodes would name one
    fire differently unless it is named by the nominal time, to the microsecond."""
    jittered = ScheduleSettings(
        name="jittered",
        job="plain",
        jitter="30s",
        timezone="UTC",
        params={"at": "{fire_time}"},
        **trigger,
    )
    node = nodes([jittered])
    node.scheduler._on_due("jittered", scheduled=nominal + dt.timedelta(seconds=17.25))
    (fire,) = node.store.fires("jittered")
    assert fire["fire_time"] == nominal
    (execution,) = node.started_executions("jittered")
    assert execution.params == {"at": nominal.isoformat()}


def test_fire_time_is_in_the_schedules_time_zone(nodes: Callable[..., Node]) -> None:
    berlin = ScheduleSettings(
        name="berlin",
        job="plain",
        cron="30 0 * * *",
        timezone="Europe/Berlin",
        params={"date": "{fire_date}", "at": "{fire_time:%H:%M %z}", "schedule": "{schedule}"},
    )
    node = nodes([berlin], Clock(dt.datetime(2026, 11, 20, 23, 30, tzinfo=UTC)))
    assert node.scheduler.fire("berlin") == "started"
    (execution,) = node.started_executions("berlin")
    assert execution.params == {"date": "2026-11-21", "at": "00:30 +0100", "schedule": "berlin"}


# ------------------------------------------------------------------------- reload


def test_reconfigure_adds_removes_and_replaces_schedules(nodes: Callable[..., Node]) -> None:
    keep, gone = daily("keep"), daily("gone")
    node = nodes([keep, gone])
    scheduler = node.scheduler
    scheduler.start()
    scheduler.pause("keep")  # a run-time pause survives a reload that leaves it unchanged

    added = daily("added", cron=f"15 {SAFE_HOUR} * * 1-5")
    scheduler.reconfigure([keep, added])
    assert scheduler.names() == ["keep", "added"]
    times = scheduler.next_fire_times()
    assert times["keep"] is None
    assert times["added"] is not None and times["added"].minute == 15
    assert times["added"].weekday() < 5
    with pytest.raises(NoSuchSchedule):
        scheduler.fire("gone")
    assert scheduler.fire("added") == "started"

    changed = daily("added", cron=f"45 {SAFE_HOUR} * * *")
    scheduler.reconfigure([keep, changed])
    described = {s["name"]: s for s in scheduler.describe()}
    assert described["added"]["trigger"] == f"cron 45 {SAFE_HOUR} * * *"
    assert described["added"]["next_fire_time"].endswith(f"{SAFE_HOUR:02d}:45:00+00:00")
    assert described["keep"]["paused"] is True

    with pytest.raises(ValueError, match="bad cron"):
        scheduler.reconfigure([daily("broken", cron="61 * * * *")])
    assert scheduler.names() == ["keep", "added"]  # a bad config changes nothing


# ------------------------------------------------------------------- crontab weekdays


@pytest.mark.parametrize("bad", ["8", "mon-xyz", "1-", "L", "1,,2"])
def test_bad_day_of_week_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="bad cron expression"):
        validate_schedule(daily(cron=f"0 1 * * {bad}"), "UTC")


def next_fires(cron: str, start: dt.datetime, count: int) -> list[dt.datetime]:
    trigger = build_trigger(daily(cron=cron), "UTC")
    times: list[dt.datetime] = []
    previous = None
    for _ in range(count):
        previous = trigger.get_next_fire_time(previous, previous or start)
        times.append(previous)
    return times


def test_cron_weekdays_fire_on_the_crontab_days() -> None:
    saturday = dt.datetime(2026, 11, 21, tzinfo=UTC)
    weekdays = next_fires("30 1 * * 1-5", saturday, 6)
    assert [t.strftime("%a %H:%M") for t in weekdays] == [
        "Mon 01:30",
        "Tue 01:30",
        "Wed 01:30",
        "Thu 01:30",
        "Fri 01:30",
        "Mon 01:30",
    ]
    assert [t.strftime("%a") for t in next_fires("0 0 * * 0", saturday, 2)] == ["Sun", "Sun"]
    assert [t.strftime("%a") for t in next_fires("0 0 * * 7", saturday, 1)] == ["Sun"]


def test_restricted_day_of_month_and_week_fire_on_either_as_in_cron() -> None:
    fires = next_fires("0 0 13 * 5", dt.datetime(2026, 11, 1, tzinfo=UTC), 6)
    assert [t.date().isoformat() for t in fires] == [
        "2026-11-06",
        "2026-11-13",
        "2026-11-20",
        "2026-11-27",
        "2026-12-04",
        "2026-12-11",
    ]
    # 2026-12-13 is a Sunday: the 13th fires whatever its weekday (AND would skip it).
    sunday_13th, friday = next_fires("0 0 13 * 5", dt.datetime(2026, 12, 12, tzinfo=UTC), 2)
    assert sunday_13th.strftime("%a %d") == "Sun 13"
    assert friday.strftime("%a %d") == "Fri 18"


def test_only_the_scheduling_modules_import_apscheduler() -> None:
    package = Path(batchd.__file__).parent
    importers = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if re.search(r"^\s*(from|import)\s+apscheduler\b", path.read_text(), re.MULTILINE)
    ]
    # The crontab evaluator (daemon/cron.py) is APScheduler's neither.
    assert sorted(importers) == ["daemon/schedule_triggers.py", "daemon/scheduler.py"]
