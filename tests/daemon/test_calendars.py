"""Business calendars and business dates (DESIGN §7), checked against dates written out by
hand: TARGET (the ECB's), NYSE, a German Land, extra closing days inline and from a file;
business-day offsets across Easter and the year end; a fire's business date with
``day_start`` across daylight-saving changes; catch-up from ``start`` on business days only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from batchd.daemon.calendars import build_calendar, business_date
from batchd.daemon.config import ConfigError, check, load_settings
from batchd.daemon.settings import CalendarSettings, ScheduleSettings
from tests.daemon.scheduling import Clock, Node, node_factory

D = dt.date
BERLIN = ZoneInfo("Europe/Berlin")


def target(**extra: object) -> CalendarSettings:
    return CalendarSettings(name="target", holidays="ECB", **extra)  # type: ignore[arg-type]


def closed_days(settings: CalendarSettings, first: dt.date, last: dt.date) -> dict[str, str]:
    calendar = build_calendar(settings)
    return {
        day.date.isoformat(): day.reason or ""
        for day in calendar.days(first, last)
        if not day.business
    }


# ------------------------------------------------------------------------- the calendars


def test_target_closes_weekends_new_year_easter_labour_day_and_christmas() -> None:
    closed = closed_days(target(), D(2025, 12, 20), D(2026, 12, 31))
    weekdays_closed = {
        day: reason for day, reason in closed.items() if D.fromisoformat(day).weekday() < 5
    }
    # TARGET's holidays, by hand: 25/26 Dec 2025, 1 Jan, Good Friday 3 Apr, Easter Monday
    # 6 Apr, 1 May, 25 Dec 2026 (26 Dec 2026 is a Saturday).
    assert sorted(weekdays_closed) == [
        "2025-12-25",
        "2025-12-26",
        "2026-01-01",
        "2026-04-03",
        "2026-04-06",
        "2026-05-01",
        "2026-12-25",
    ]
    assert weekdays_closed["2026-04-03"] == "Good Friday"
    assert weekdays_closed["2026-04-06"] == "Easter Monday"
    assert closed["2026-12-26"] == "Saturday"  # the weekday comes first
    assert closed["2026-03-29"] == "Sunday"
    # Ascension Day and Whit Monday are holidays in Germany, not in TARGET.
    assert "2026-05-14" not in closed and "2026-05-25" not in closed


def test_target_in_2025_has_easter_in_april() -> None:
    closed = closed_days(target(), D(2025, 4, 14), D(2025, 4, 25))
    assert closed == {
        "2025-04-18": "Good Friday",
        "2025-04-19": "Saturday",
        "2025-04-20": "Sunday",
        "2025-04-21": "Easter Monday",
    }


def test_nyse_and_a_german_land() -> None:
    nyse = build_calendar(CalendarSettings(name="nyse", holidays="NYSE"))
    assert nyse.closed_because(D(2026, 11, 26)) == "Thanksgiving Day"
    assert nyse.closed_because(D(2026, 7, 3)) == "Independence Day (observed)"
    assert nyse.is_business_day(D(2026, 4, 6))  # Easter Monday trades in New York
    bavaria = build_calendar(CalendarSettings(name="by", holidays="DE-BY"))
    germany = build_calendar(CalendarSettings(name="de", holidays="de"))
    assert bavaria.closed_because(D(2026, 1, 6)) == "Epiphany"
    assert germany.is_business_day(D(2026, 1, 6))


def test_extra_closing_days_inline_and_from_a_file(tmp_path: Path) -> None:
    file = tmp_path / "closing-days.txt"
    file.write_text("# bank's own closing days\n2026-12-24 Christmas Eve\n\n2026-06-15\n")
    settings = target(dates=["2026-12-31"], file=file, weekdays=["Mon", "Tue", "Wed", "Thu"])
    closed = closed_days(settings, D(2026, 6, 12), D(2026, 6, 15))
    assert closed == {
        "2026-06-12": "Friday",
        "2026-06-13": "Saturday",
        "2026-06-14": "Sunday",
        "2026-06-15": "closing day (closing-days.txt)",
    }
    calendar = build_calendar(settings)
    assert calendar.closed_because(D(2026, 12, 24)) == "Christmas Eve"
    assert calendar.closed_because(D(2026, 12, 31)) == "closing day"


def test_business_day_offsets_across_easter_and_the_year_end() -> None:
    calendar = build_calendar(target(dates=["2026-12-31"]))
    assert calendar.shift(D(2026, 4, 2), 1) == D(2026, 4, 7)  # over Easter
    assert calendar.shift(D(2026, 4, 7), -1) == D(2026, 4, 2)
    assert calendar.shift(D(2025, 12, 24), 1) == D(2025, 12, 29)
    assert calendar.shift(D(2026, 1, 2), -1) == D(2025, 12, 31)
    assert calendar.shift(D(2026, 12, 30), 1) == D(2027, 1, 4)  # 31 Dec, 1 Jan, weekend
    assert calendar.shift(D(2026, 4, 4), 1) == D(2026, 4, 7)  # from a closed day
    assert calendar.shift(D(2026, 4, 4), 0) == D(2026, 4, 4)


# ------------------------------------------------------------------------ business dates


def at(*args: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[misc]


def test_business_date_follows_day_start_on_the_wall_clock() -> None:
    six = dt.time(6)
    assert business_date(at(2026, 11, 20, 5, 59), six) == D(2026, 11, 19)
    assert business_date(at(2026, 11, 20, 6, 0), six) == D(2026, 11, 20)
    assert business_date(at(2026, 11, 20, 0, 0), dt.time(0)) == D(2026, 11, 20)


def test_business_date_in_the_hours_clocks_repeat_and_skip() -> None:
    half_two = dt.time(2, 30)
    # 25 Oct 2026: 02:00-03:00 comes twice. Both 02:15 belong to the day before; both
    # 02:45 to the day itself, an hour of elapsed time apart or not.
    for fold in (0, 1):
        assert business_date(at(2026, 10, 25, 2, 15, fold=fold), half_two) == D(2026, 10, 24)
        assert business_date(at(2026, 10, 25, 2, 45, fold=fold), half_two) == D(2026, 10, 25)
    # 29 Mar 2026: 02:00-03:00 does not exist; cron's 02:30 fires at 03:00, on the day itself.
    jumped = dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC).astimezone(BERLIN)
    assert jumped.hour == 3
    assert business_date(jumped, half_two) == D(2026, 3, 29)
    assert business_date(jumped, dt.time(6)) == D(2026, 3, 28)


# ------------------------------------------------------- fires on business days, catch-up


@pytest.fixture
def nodes(sqlite_url: str) -> Iterator[Callable[..., Node]]:
    yield from node_factory(sqlite_url, Clock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC)))


def with_calendars(
    nodes: Callable[..., Node], schedules: list[ScheduleSettings], clock: Clock
) -> Node:
    """A node whose calendar ``target`` also closes on 1 April 2026."""
    return nodes(schedules, clock, calendars=[target(dates=["2026-04-01"])])


def eod(**overrides: object) -> ScheduleSettings:
    values: dict[str, object] = {
        "name": "eod",
        "job": "plain",
        "cron": "30 1 * * *",  # 01:30 Berlin: before day_start, so the day before's batch
        "timezone": "Europe/Berlin",
        "calendar": "target",
        "day_start": "06:00",
        "params": {
            "date": "{business_date}",
            "previous": "{business_date-1bd}",
            "settle": "{fire_date+2bd}",
        },
        "catch_up": "all",
        "start": "2026-03-27T00:00:00",
    }
    values.update(overrides)
    return ScheduleSettings(**values)  # type: ignore[arg-type]


def test_a_never_fired_schedule_catches_up_business_dates_from_start(
    nodes: Callable[..., Node],
) -> None:
    # Now: Wednesday 8 April 2026, 12:00 Berlin. Fires from 27 March 01:30 on; business
    # dates from 26 March; 1 April is an extra closing day, Easter closes 3 and 6 April.
    clock = Clock(dt.datetime(2026, 4, 8, 10, 0, tzinfo=dt.UTC))
    results = with_calendars(nodes, [eod()], clock).scheduler.catch_up()
    started = [r for r in results if r.outcome == "started"]
    dates = [r.params["date"] for r in started if r.params]
    assert dates == [
        "2026-03-26",
        "2026-03-27",
        "2026-03-30",
        "2026-03-31",
        "2026-04-02",
        "2026-04-07",
    ]
    by_date = {r.params["date"]: r.params for r in started if r.params}
    assert by_date["2026-04-07"]["previous"] == "2026-04-02"  # over 3, 6 April
    assert by_date["2026-03-30"]["previous"] == "2026-03-27"  # over the weekend
    # The 2 April batch fires on 3 April (Good Friday): fire_date + 2bd skips Easter.
    assert by_date["2026-04-02"]["settle"] == "2026-04-08"
    # The fire on 29 March (a Sunday, and the night clocks went forward) is for 28 March.
    assert all(r.outcome == "started" for r in results)
    # A restart catches up nothing more.
    assert [r.outcome for r in with_calendars(nodes, [eod()], clock).scheduler.catch_up()] == []


def test_catch_up_from_start_is_bounded_by_end_and_only_for_all(
    nodes: Callable[..., Node],
) -> None:
    clock = Clock(dt.datetime(2026, 4, 8, 10, 0, tzinfo=dt.UTC))
    bounded = with_calendars(nodes, [eod(end="2026-03-31T12:00:00")], clock).scheduler.catch_up()
    assert [r.params["date"] for r in bounded if r.params] == [
        "2026-03-26",
        "2026-03-27",
        "2026-03-30",
    ]
    latest = with_calendars(nodes, [eod(name="other", catch_up="latest")], clock)
    assert latest.scheduler.catch_up() == []


def test_a_fire_on_a_closing_day_runs_nothing_unless_asked(nodes: Callable[..., Node]) -> None:
    # Saturday 4 April 2026 02:00 Berlin: business date Friday 3 April, Good Friday.
    clock = Clock(dt.datetime(2026, 4, 4, 0, 0, tzinfo=dt.UTC))
    node = with_calendars(nodes, [eod(catch_up="none")], clock)
    scheduler = node.scheduler
    assert scheduler.fire("eod") == "started"  # an operator asked: it runs anyway
    result = scheduler.last_result("eod")
    assert result is not None and result.params is not None
    assert result.params["date"] == "2026-04-03"
    closed = scheduler._fire(scheduler._require("eod"), clock.now + dt.timedelta(minutes=1))
    assert closed.outcome == "closed"
    assert "Good Friday" in (closed.message or "")
    assert [f["outcome"] for f in node.store.fires("eod")] == ["started"]


# ------------------------------------------------------------------------- config errors


def config_problems(tmp_path: Path, text: str) -> list[str]:
    from tests.daemon.scheduling import make_registry

    file = tmp_path / "batchd.toml"
    file.write_text(text)
    try:
        settings = load_settings(file, env={})
        check(settings, make_registry())
    except ConfigError as error:
        return error.problems
    return []


def test_bad_calendars_and_schedules_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    problems = config_problems(
        tmp_path,
        f"""
[[calendars]]
name = "x"
holidays = ["ECB", "MOON"]
file = "{tmp_path / "missing.txt"}"

[[calendars]]
name = "y"
holidays = "DE-ZZ"

[[schedules]]
name = "a"
job = "plain"
cron = "0 1 * * *"
calendar = "nope"
after = [{{ job = "ghost" }}]

[[schedules]]
name = "b"
job = "plain"
cron = "0 1 * * *"
params = {{ d = "{{fire_date-1bd}}" }}
""",
    )
    text = "\n".join(problems)
    assert "calendars[0] (x).holidays: unknown market or country 'MOON'" in text
    assert f"calendars[0] (x).file: cannot read {tmp_path / 'missing.txt'}" in text
    assert "calendars[1] (y).holidays: DE has no subdivision 'ZZ'" in text
    assert "schedules[0] (a).calendar: no calendar named 'nope' (calendars: x, y)" in text
    assert "schedules[0] (a).after[0].job: no job named 'ghost'" in text
    assert "schedules[1] (b).params.d: {fire_date-1bd}: an offset in business days" in text


def test_a_bad_closing_date_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    inline = config_problems(tmp_path, '[[calendars]]\nname = "x"\ndates = ["2026-02-30"]\n')
    assert inline == [
        "calendars[0] (x).dates[0]: Input should be a valid date or datetime, day value is "
        "outside expected range (got '2026-02-30')"
    ]
    file = tmp_path / "days.txt"
    file.write_text("2026-12-24\n2026-13-01 nonsense\n")
    in_file = config_problems(tmp_path, f'[[calendars]]\nname = "y"\nfile = "{file}"\n')
    assert in_file == [
        f"calendars[0] (y).file: {file} line 2: '2026-13-01' is not a date (YYYY-MM-DD)"
    ]


# ------------------------------------------------------------------------------ backfill


def test_a_backfill_with_a_calendar_runs_business_dates_only(nodes: Callable[..., Node]) -> None:
    from batchd.daemon.backfill import Span, plan_backfill

    node = nodes([])
    calendar = build_calendar(target())
    span = Span("daily", D(2026, 4, 1), D(2026, 4, 8), "date", {})
    plan = plan_backfill(node.operator, span, calendar)
    assert [item.date for item in plan.to_run] == [
        "2026-04-01",
        "2026-04-02",
        "2026-04-07",
        "2026-04-08",
    ]
    assert [(s["date"], s["reason"]) for s in plan.skipped] == [
        ("2026-04-03", "Good Friday"),
        ("2026-04-04", "Saturday"),
        ("2026-04-05", "Sunday"),
        ("2026-04-06", "Easter Monday"),
    ]
    assert len(plan_backfill(node.operator, span).to_run) == 8
