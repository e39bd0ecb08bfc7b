"""An interval schedule with jitter keeps to its grid, from ``start`` up to ``end``: each fire
is its grid time delayed by less than the jitter (the delays do not add up from one fire to
the next), and the grid time at ``end`` still fires (``end`` bounds the nominal fire times,
as for cron schedules; its jitter may delay the run past it)."""

from __future__ import annotations

import datetime as dt
from datetime import UTC

import pytest

from batchd.daemon.schedule_triggers import build_trigger
from batchd.daemon.settings import ScheduleSettings

START = dt.datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)


def _fires(schedule: ScheduleSettings, now: dt.datetime) -> list[dt.datetime]:
    """Every fire time the trigger gives, asked for as APScheduler asks (the next after
    the previous one, as it ran)."""
    trigger = build_trigger(schedule, "UTC")
    fires = []
    fire = trigger.get_next_fire_time(None, now)
    while fire is not None and len(fires) < 1000:
        fires.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    return fires


@pytest.mark.parametrize("cron", [None, "0 * * * *"])
def test_a_jittered_schedule_fires_on_its_grid_up_to_its_end(cron: str | None) -> None:
    schedule = ScheduleSettings(
        name="s",
        job="j",
        cron=cron,
        interval=None if cron else "1h",
        jitter="30m",
        start=START,
        end=START + 10 * HOUR,
    )
    fires = _fires(schedule, START - HOUR)
    assert len(fires) == 11, fires
    for hour, fire in enumerate(fires):
        assert dt.timedelta(0) <= fire - (START + hour * HOUR) < dt.timedelta(minutes=30), fires
