"""Fires that wait for other jobs (``after``) and deadlines, with the real daemon (DESIGN §7).

The end-of-day example: ``posting`` of a business date waits for ``file_import`` of that
date. The waiting fire lives in the repository: it is listed by ``schedules``, survives a
restart, starts once its dependency COMPLETED (woken by the completion, not a slow poll),
is given up after ``wait_timeout``, and a daemon killed between claiming it and starting
its job leaves it to be started once by the next.
"""

from __future__ import annotations

import datetime as dt
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from batchd import SqlJobRepository
from batchd.repository import TriggerStore
from tests.daemon.support import Control, Launched, control_config, launch, wait_until
from tests.daemon.test_metrics import free_port
from tests.daemon.toml_text import table

__all__ = ["launch"]

JOBS = '["tests.daemon.daemon_jobs", "tests.daemon.control_jobs", "tests.daemon.calendar_jobs"]'
NEVER = "0 0 1 1 *"  # fires by request only, within the test
BUSINESS_DATE = {"date": "{business_date}"}


def posting_schedule(**keys: object) -> str:
    """The ``posting`` schedule: fires by request, for a business date, after the
    ``file_import`` of that date; ``keys`` add to it or replace (None: leave out)."""
    after = [{"job": "file_import", "params": BUSINESS_DATE}]
    values = {"name": "posting", "job": "posting", "cron": NEVER, "params": BUSINESS_DATE}
    return table("schedules", **{**values, "after": after, **keys})


def eod_config(tmp: Path, **schedule: str) -> str:
    values = {"jobs": JOBS, "lease": '"2s"', "recover_every": '"0.5s"'}
    return control_config(tmp, posting_schedule(day_start="00:00", **schedule), **values)


def fires(database: Path, schedule: str = "posting") -> list[dict[str, Any]]:
    repository = SqlJobRepository(f"sqlite:///{database}")
    try:
        return TriggerStore(repository).fires(schedule)
    finally:
        repository.dispose()


def executions(control: Control, job: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = control.call("executions", job=job)["executions"]
    return result


def test_posting_waits_for_the_import_across_a_restart_and_starts_once(
    tmp_path: Path, launch: Callable[..., Launched]
) -> None:
    config = eod_config(tmp_path)
    first = launch(config)
    control = first.connect()
    fired = control.call("fire", schedule="posting")
    assert fired["outcome"] == "waiting"
    day = fired["params"]["date"]
    (listed,) = [s for s in control.call("schedules")["schedules"] if s["name"] == "posting"]
    (waiting,) = listed["waiting"]
    assert waiting["business_date"] == day
    assert waiting["waits_for"] == [{"job": "file_import", "params": {"date": day}}]
    # The import of another date is not what it waits for.
    other = control.call("start", job="file_import", params={"date": "2000-01-01"})
    control.wait_for_status(other["id"], "COMPLETED")
    control.close()
    first.daemon.stop()

    second = launch(config)
    control = second.connect()
    (listed,) = [s for s in control.call("schedules")["schedules"] if s["name"] == "posting"]
    assert [w["business_date"] for w in listed["waiting"]] == [day]
    assert executions(control, "posting") == []
    imported = control.call("start", job="file_import", params={"date": day})
    control.wait_for_status(imported["id"], "COMPLETED")
    wait_until(lambda: len(executions(control, "posting")) == 1)
    (posting,) = executions(control, "posting")
    assert posting["params"] == {"date": day}
    control.wait_for_status(posting["id"], "COMPLETED")
    (row,) = fires(second.database)
    assert (row["outcome"], row["job_execution_id"]) == ("started", posting["id"])
    (listed,) = [s for s in control.call("schedules")["schedules"] if s["name"] == "posting"]
    assert listed["waiting"] == []


def test_a_fire_is_given_up_after_wait_timeout(
    tmp_path: Path, launch: Callable[..., Launched]
) -> None:
    daemon = launch(eod_config(tmp_path, wait_timeout="1s"))
    control = daemon.connect()
    assert control.call("fire", schedule="posting")["outcome"] == "waiting"
    wait_until(lambda: fires(daemon.database)[0]["outcome"] == "dependency_timeout")
    assert executions(control, "posting") == []
    wait_until(lambda: "dependency_timeout" in daemon.daemon.output())
    assert "gave up" in daemon.daemon.output()


def test_a_daemon_killed_after_claiming_a_waiting_fire_leaves_it_to_start_once(
    tmp_path: Path, launch: Callable[..., Launched]
) -> None:
    config = eod_config(tmp_path, on_crash="restart")
    first = launch(config, env={"BATCHD_FAILPOINTS": "scheduler.after_wait_claim=kill"})
    control = first.connect()
    day = control.call("fire", schedule="posting")["params"]["date"]
    control.call("start", job="file_import", params={"date": day})
    assert first.daemon.wait(timeout=20) == -signal.SIGKILL
    control.close()
    (row,) = fires(first.database)
    assert row["outcome"] == "claimed" and row["job_execution_id"] is None

    second = launch(config)
    control = second.connect()
    wait_until(lambda: fires(second.database)[0]["outcome"] == "started")
    (posting,) = executions(control, "posting")
    assert posting["params"] == {"date": day}
    control.wait_for_status(posting["id"], "COMPLETED")
    assert "taken over" in second.daemon.output() or "died" in second.daemon.output()


# ------------------------------------------------------------------------------ deadlines


def scrape(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, sample.labels.get("schedule", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("batchd_schedule_")
    }


def gated(gate: Path, deadline: str = "1s") -> str:
    """The ``eod`` schedule of the job that works until ``gate`` exists, due within ``deadline``."""
    params = {**BUSINESS_DATE, "gate": gate}
    return table(
        "schedules", name="eod", job="gated", cron=NEVER, params=params, deadline=deadline
    )


def test_a_slow_job_misses_its_deadline_once_and_is_late_until_it_completes(
    tmp_path: Path, launch: Callable[..., Launched]
) -> None:
    port = free_port()
    gate = tmp_path / "gate"
    config = control_config(tmp_path, gated(gate), jobs=JOBS).replace(
        "listen = ''", f'listen = "127.0.0.1:{port}"'
    )
    daemon = launch(config)
    assert scrape(port)[("batchd_schedule_late", "eod")] == 0
    control = daemon.connect()
    fired = control.call("fire", schedule="eod")
    assert fired["outcome"] == "started"
    missed = ("batchd_schedule_deadline_missed_total", "eod")
    wait_until(lambda: scrape(port).get(missed) == 1)
    assert scrape(port)[("batchd_schedule_late", "eod")] == 1
    day = fired["params"]["date"]
    assert f"schedule eod business date {day}" in daemon.daemon.output()
    assert "not completed by its deadline" in daemon.daemon.output()

    gate.touch()
    control.wait_for_status(fired["execution_id"], "COMPLETED")
    wait_until(lambda: scrape(port)[("batchd_schedule_late", "eod")] == 0)
    assert scrape(port)[missed] == 1  # counted once
    (row,) = fires(daemon.database, "eod")
    assert row["deadline_state"] == "done"


def test_a_fire_completed_in_time_meets_its_deadline(
    tmp_path: Path, launch: Callable[..., Launched]
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    # An hour: met as soon as it completes, however loaded the machine, not once the hour is up.
    daemon = launch(control_config(tmp_path, gated(gate, deadline="1h"), jobs=JOBS))
    control = daemon.connect()
    fired = control.call("fire", schedule="eod")
    control.wait_for_status(fired["execution_id"], "COMPLETED")
    wait_until(lambda: fires(daemon.database, "eod")[0]["deadline_state"] == "met")
    assert "deadline" not in daemon.daemon.output().split("fired by request")[-1]
    assert dt.date.fromisoformat(fired["params"]["date"])
