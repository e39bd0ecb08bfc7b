"""Crontab expressions: their fire times agree with a reference evaluator (cronsim, which
follows Debian cron) over ordinary weeks and daylight-saving changes in several zones."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from batchd.daemon.cron import CronExpression
from batchd.daemon.schedule_triggers import build_trigger
from batchd.daemon.settings import ScheduleSettings

UTC = dt.UTC
UTC_ZONE = ZoneInfo("UTC")

EXPRESSIONS = [
    # day of month and day of week: ANDed when either starts with "*", else ORed
    "0 0 1 * */2",  # a 1st that is a Sunday, Tuesday, Thursday or Saturday
    "0 0 13 * */1",  # every 13th
    "0 0 */2 * 1",  # an odd day that is a Monday
    "0 0 13 * 5",  # every 13th and every Friday
    "0 0 1,15 * 1",
    "0 0 1-7 * 1",  # the first seven days and every Monday (not "the first Monday")
    "0 0 29 2 *",  # leap days only
    "0 12 * * 0",
    "0 12 * * 7",  # 7 is Sunday too
    "5 4 * * sun",
    "30 1 * * 1-5",
    "0 0 1 jan,jul *",
    "59 23 31 12 *",
    "@daily",
    "@weekly",
    "@monthly",
    # daylight-saving changes: fixed times fire once a day, wildcards at each matching instant
    "30 2 * * *",
    "30 1 * * *",
    "0 2 * * *",
    "0 3 * * *",
    "0,30 2 * * *",
    "15 1-3 * * *",
    "0 0 * * *",
    "*/20 * * * *",
    "@hourly",
    "30 */2 * * *",
    "* 2 * * *",
    "*/7 */5 * * *",
]
ZONES = ["Europe/Berlin", "America/New_York", "America/Santiago", "Asia/Kolkata", "UTC"]
# Weeks around the 2026 changes: Berlin 03-29 and 10-25, New York 03-08 and 11-01,
# Santiago 04-05 and 09-06 (at midnight); and a month with a Friday the 13th.
STARTS = [
    dt.datetime(2026, 3, 5),
    dt.datetime(2026, 3, 26),
    dt.datetime(2026, 4, 2),
    dt.datetime(2026, 9, 3),
    dt.datetime(2026, 10, 22),
    dt.datetime(2026, 10, 29),
    dt.datetime(2026, 2, 1),
]


def ours(expression: str, start: dt.datetime, count: int) -> list[dt.datetime]:
    parsed, zone = CronExpression.parse(expression), start.tzinfo
    assert isinstance(zone, ZoneInfo), "a start in the time zone to evaluate in"
    times: list[dt.datetime] = []
    after = start
    for _ in range(count):
        following = parsed.next_fire(after, zone)
        assert following is not None
        times.append(following)
        after = following
    return times


def reference(expression: str, start: dt.datetime, count: int) -> list[dt.datetime]:
    text = {"@daily": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *"}.get(
        expression, "0 * * * *" if expression == "@hourly" else expression
    )
    times = CronSim(text, start)
    return [next(times).astimezone(UTC) for _ in range(count)]


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_fire_times_agree_with_the_reference(expression: str, zone: str) -> None:
    count = 150 if expression.split()[0].startswith("*") else 12
    for start in STARTS:
        local = start.replace(tzinfo=ZoneInfo(zone))
        assert ours(expression, local, count) == reference(expression, local, count), start


def local(times: list[dt.datetime], zone: str, form: str = "%m-%d %H:%M%z") -> list[str]:
    return [t.astimezone(ZoneInfo(zone)).strftime(form) for t in times]


@pytest.mark.parametrize(
    ("expression", "fires"),
    [
        # The 1sts of 2026 that are a Sunday, Tuesday, Thursday or Saturday.
        (
            "0 0 1 * */2",
            [
                "Sun 02-01 00:00",
                "Sun 03-01 00:00",
                "Sat 08-01 00:00",
                "Tue 09-01 00:00",
                "Thu 10-01 00:00",
            ],
        ),
        ("0 0 13 * */1", ["Tue 01-13 00:00", "Fri 02-13 00:00", "Fri 03-13 00:00"]),
    ],
    ids=["1st-on-every-2nd-weekday", "13th-on-every-weekday"],
)
def test_a_step_in_the_day_of_week_keeps_the_day_of_month_restricting(
    expression: str, fires: list[str]
) -> None:
    """``*/2`` starts with ``*``: the day of month and day of week must both match, as in
    crontab, systemd and cronsim (not "every Sunday, Tuesday, Thursday and Saturday")."""
    start = dt.datetime(2026, 1, 1, 12, tzinfo=UTC_ZONE)
    assert local(ours(expression, start, len(fires)), "UTC", "%a %m-%d %H:%M") == fires


@pytest.mark.parametrize(
    ("zone", "expression", "after", "fires"),
    [
        # Skipped hour: a fixed time in it fires once, right after the jump.
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-03-28T12:00",
            ["03-29 03:00+0200", "03-30 02:30+0200"],
        ),
        (
            "America/New_York",
            "30 2 * * *",
            "2026-03-07T12:00",
            ["03-08 03:00-0400", "03-09 02:30-0400"],
        ),
        # Repeated hour: a fixed time in it fires at its first occurrence only.
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-10-24T12:00",
            ["10-25 02:30+0200", "10-26 02:30+0100"],
        ),
        (
            "America/New_York",
            "30 1 * * *",
            "2026-10-31T12:00",
            ["11-01 01:30-0400", "11-02 01:30-0500"],
        ),
        # A wildcard hour fires at both occurrences, and not at all in a skipped hour.
        (
            "Europe/Berlin",
            "30 * * * *",
            "2026-10-25T01:00",
            ["10-25 01:30+0200", "10-25 02:30+0200", "10-25 02:30+0100", "10-25 03:30+0100"],
        ),
        (
            "Europe/Berlin",
            "30 * * * *",
            "2026-03-29T01:00",
            ["03-29 01:30+0100", "03-29 03:30+0200"],
        ),
    ],
)
def test_daylight_saving_changes(zone: str, expression: str, after: str, fires: list[str]) -> None:
    start = dt.datetime.fromisoformat(after).replace(tzinfo=ZoneInfo(zone))
    assert local(ours(expression, start, len(fires)), zone) == fires


def test_a_day_of_week_range_may_wrap_round_the_week() -> None:
    saturday = dt.datetime(2026, 11, 21, 12, tzinfo=UTC_ZONE)
    days = [t.strftime("%a") for t in ours("0 0 * * 5-1", saturday, 4)]
    assert days == ["Sun", "Mon", "Fri", "Sat"]


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("61 * * * *", "minute 61 is not in 0-59"),
        ("0 24 * * *", "hour 24 is not in 0-23"),
        ("0 0 0 * *", "day of month 0 is not in 1-31"),
        ("0 0 * 13 *", "month 13 is not in 1-12"),
        ("0 0 * * 8", "day of week 8 is not in 0-7"),
        ("0 0 * * mon-xyz", "unknown day of week 'xyz'"),
        ("0 0 * * 1-", "bad day of week '1-'"),
        ("0 0 * * L", "unknown day of week 'l'"),
        ("0 0 * * 1,,2", "bad day of week ''"),
        ("*/0 * * * *", "bad step in minute '*/0'"),
        ("0 5-1 * * *", "hour range '5-1' runs backwards"),
        ("0 0 30 2 *", "day of month 30 never comes in month 2"),
        ("0 0 * *", "expected 5 fields, got 4"),
        ("@often", "expected 5 fields, got 1"),
    ],
)
def test_bad_expressions_say_what_is_wrong(expression: str, problem: str) -> None:
    with pytest.raises(ValueError) as error:
        CronExpression.parse(expression)
    assert str(error.value) == problem


def test_the_trigger_fires_each_instant_once_as_apscheduler_asks_for_them() -> None:
    """APScheduler asks for the next fire after the previous one: across the fall-back day
    in Berlin a 02:30 schedule yields each date once, as aware UTC."""
    schedule = ScheduleSettings(name="s", job="j", cron="30 2 * * *", timezone="Europe/Berlin")
    trigger = build_trigger(schedule, "UTC")
    now = dt.datetime(2026, 10, 23, 12, tzinfo=UTC)
    fire = trigger.get_next_fire_time(None, now)
    fires = []
    for _ in range(5):
        fires.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    assert all(f.tzinfo is UTC for f in fires)
    assert [f.astimezone(ZoneInfo("Europe/Berlin")).date().day for f in fires] == [
        24,
        25,
        26,
        27,
        28,
    ]
