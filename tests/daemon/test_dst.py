"""Schedules across daylight-saving changes: catch-up runs every date exactly once when the
daemon was down over a spring-forward or fall-back day, whether the fire time is inside the
skipped hour, inside the repeated hour or beside them. Real SQLite repository, operator,
TriggerStore and Scheduler; time comes from an injected clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from zoneinfo import ZoneInfo

import pytest

from batchd import BatchStatus
from batchd.daemon.settings import ScheduleSettings
from tests.daemon.scheduling import Clock, Node, node_factory

UTC = dt.UTC


@pytest.fixture
def nodes(sqlite_url: str) -> Iterator[Callable[..., Node]]:
    yield from node_factory(sqlite_url, Clock(dt.datetime(2026, 1, 1, tzinfo=UTC)))


def dates(node: Node) -> list[str]:
    return sorted(e.params["date"] for e in node.started_executions("eod"))


# zone, the day the clocks change, the cron time, when that day's fire is (local, ISO).
CHANGES = [
    # spring forward: 02:00-02:59 never happens; a fixed time in it fires at 03:00
    ("Europe/Berlin", "2026-03-29", "30 2", "2026-03-29T03:00:00+02:00"),
    ("Europe/Berlin", "2026-03-29", "30 1", "2026-03-29T01:30:00+01:00"),
    ("America/New_York", "2026-03-08", "30 2", "2026-03-08T03:00:00-04:00"),
    ("America/New_York", "2026-03-08", "30 1", "2026-03-08T01:30:00-05:00"),
    # fall back: the hour repeated (Berlin 02:00-02:59, New York 01:00-01:59) fires once
    ("Europe/Berlin", "2026-10-25", "30 2", "2026-10-25T02:30:00+02:00"),
    ("Europe/Berlin", "2026-10-25", "30 1", "2026-10-25T01:30:00+02:00"),
    ("America/New_York", "2026-11-01", "30 1", "2026-11-01T01:30:00-04:00"),
    ("America/New_York", "2026-11-01", "30 2", "2026-11-01T02:30:00-05:00"),
]


@pytest.mark.parametrize("back_on_the_day", [False, True], ids=["down-over", "back-on-the-day"])
@pytest.mark.parametrize("catch_up", ["all", "latest"])
@pytest.mark.parametrize(("zone", "day", "time", "fire"), CHANGES)
def test_catch_up_over_a_clock_change_runs_each_date_once(
    nodes: Callable[..., Node],
    zone: str,
    day: str,
    time: str,
    fire: str,
    catch_up: str,
    back_on_the_day: bool,
) -> None:
    """Down from three days before the change until two days after it; or back on the
    change day 75 minutes after its fire (after the repeated hour, on a fall-back day) and
    down again until two days after."""
    tz = ZoneInfo(zone)
    change = dt.date.fromisoformat(day)
    minute, hour = (int(part) for part in time.split())
    schedule = ScheduleSettings(
        name="eod",
        job="daily",
        cron=f"{time} * * *",
        timezone=zone,
        params={"date": "{fire_date}"},
        catch_up=catch_up,
    )
    the_fire = dt.datetime.fromisoformat(fire)
    last_run = dt.datetime.combine(change - dt.timedelta(days=3), dt.time(hour, minute), tz)
    day_of = [str(change + dt.timedelta(days=n)) for n in range(-2, 3)]
    noon_after = dt.datetime.combine(change + dt.timedelta(days=2), dt.time(12), tz)
    clocks = [the_fire + dt.timedelta(minutes=75)] if back_on_the_day else []
    clocks.append(noon_after)

    for number, now in enumerate(clocks):
        node = nodes([schedule], Clock(now))
        if number == 0:
            node.store.record_fire("eod", last_run)
        results = node.scheduler.catch_up()
        assert [r.outcome for r in results] == ["started"] * len(results)
        executions = node.started_executions("eod")
        assert all(e.status == BatchStatus.COMPLETED for e in executions)
        assert node.scheduler.missed_fire_times("eod") == []
        node.stop()

    if catch_up == "all":
        expected = day_of
    else:  # the newest missed date at each start
        expected = [day_of[2], day_of[4]] if back_on_the_day else [day_of[4]]
    assert dates(node) == expected
    fires = [f["fire_time"] for f in node.store.fires("eod")]
    local_dates = [str(f.astimezone(tz).date()) for f in fires]
    assert len(set(local_dates)) == len(local_dates)  # one fire a date
    if day_of[2] in expected:
        assert the_fire in fires  # the change day's fire, at the time the table says


def test_an_interval_fires_every_elapsed_interval_across_the_fall_back(
    nodes: Callable[..., Node],
) -> None:
    """Berlin 2026-10-25: 02:00-02:59 happens twice; a 30-minute interval fires in both."""
    berlin = ZoneInfo("Europe/Berlin")
    schedule = ScheduleSettings(
        name="often", job="plain", interval="30m", timezone="Europe/Berlin", catch_up="all"
    )
    start = dt.datetime(2026, 10, 25, 1, 0, tzinfo=berlin)  # 23:00 UTC the day before
    node = nodes([schedule], Clock(dt.datetime(2026, 10, 25, 3, 45, tzinfo=berlin)))
    node.store.record_fire("often", start)
    missed = node.scheduler.missed_fire_times("often")
    assert [m - start for m in missed] == [dt.timedelta(minutes=30 * n) for n in range(1, 8)]
    assert [m.astimezone(berlin).strftime("%H:%M%z") for m in missed] == [
        "01:30+0200",
        "02:00+0200",
        "02:30+0200",
        "02:00+0100",
        "02:30+0100",
        "03:00+0100",
        "03:30+0100",
    ]


def test_a_jittered_fire_in_the_repeated_hour_is_named_by_its_own_nominal_time(
    nodes: Callable[..., Node],
) -> None:
    """A run due 17.25 s after the second 02:00 of the fall-back day is that fire, not the
    first 02:00 an hour before (which a wall-time comparison would pick)."""
    berlin = ZoneInfo("Europe/Berlin")
    schedule = ScheduleSettings(
        name="often", job="plain", interval="15m", jitter="30s", timezone="Europe/Berlin"
    )
    node = nodes([schedule])
    second_two = dt.datetime(2026, 10, 25, 2, 0, fold=1, tzinfo=berlin)
    assert second_two.utcoffset() == dt.timedelta(hours=1)
    # As APScheduler hands it over: an aware time in the schedule's zone (fold=1).
    due = (second_two.astimezone(UTC) + dt.timedelta(seconds=17.25)).astimezone(berlin)
    assert due.fold == 1
    node.scheduler._on_due("often", scheduled=due)
    (recorded,) = node.store.fires("often")
    assert recorded["fire_time"] == second_two.astimezone(UTC)
