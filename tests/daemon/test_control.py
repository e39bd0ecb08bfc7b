"""The control socket of the real daemon (`batchd run` as a subprocess), over a real Unix
socket: every operation, bad input, slow and silent clients, peer credentials, and thousands
of random requests."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

import batchd
from batchd import JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder, StepContext
from batchd.daemon.protocol import MAX_REQUEST_BYTES, OPERATIONS
from batchd.model import STEP_COUNTERS
from batchd.repository.job_repository import PurgeResult
from batchd.repository.tables import step_context
from tests.daemon.support import (
    Control,
    DaemonProcess,
    Launch,
    Launched,
    control_config,
    table_counts,
    wait_until,
)
from tests.daemon.test_daemon import orphan_execution

SCHEDULE = (
    '[[schedules]]\nname = "daily"\njob = "dated"\ncron = "0 3 * * *"\n'
    'params = { date = "{fire_date}" }\n'
)
EXECUTION_KEYS = {
    "id",
    "job",
    "instance_id",
    "params",
    "status",
    "exit_status",
    "attempt",
    "create_time",
    "start_time",
    "end_time",
    "exit_message",
    "node",
    "steps",
}
# A step's counters are the repository's, every one.
STEP_KEYS = {"name", "status", "exit_status", *STEP_COUNTERS}
STEP_KEYS |= {"start_time", "end_time", "exit_message", "progress"}
# The history both purge tests make, 100 days ago (but for the last, a recent success):
# complete, incomplete, abandoned, completed by a restart, failed and completed now.
PURGE_HISTORY = ["COMPLETED", "FAILED", "ABANDONED", "COMPLETED", "COMPLETED"]


def numbers_file(path: Path, count: int) -> Path:
    path.write_text("".join(f"{n}\n" for n in range(1, count + 1)))
    return path


def utc_iso(value: str | None) -> bool:
    """An ISO 8601 time in UTC with an explicit +00:00 offset."""
    return (
        value is not None
        and value.endswith("+00:00")
        and datetime.fromisoformat(value).utcoffset() == timedelta(0)
    )


def ids(executions: list[dict[str, Any]]) -> list[int]:
    return [execution["id"] for execution in executions]


# ------------------------------------------------------------------------------ the socket


def test_socket_mode_ping_jobs_and_schedules(launch: Launch, tmp_path: Path) -> None:
    path = tmp_path / "run" / "batchd" / "control.sock"  # its directories do not exist yet
    launched = launch(socket_path=path, mode="0640", extra=SCHEDULE)
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o640
    control = launched.connect()

    pong = control.call("ping")
    assert pong["pong"] is True
    assert pong["version"] == batchd.__version__
    assert pong["pid"] == launched.daemon.proc.pid
    assert pong["database"] == "ok"
    assert 0 <= pong["uptime_seconds"] < 60

    jobs = {job["name"]: job for job in control.call("jobs")["jobs"]}
    assert jobs["dated"] == {
        "name": "dated",
        "steps": ["note"],
        "restartable": True,
        "params_model": "DateParams",
    }
    assert {"count_file", "slow_dated", "stubborn"} <= set(jobs)

    [daily] = control.call("schedules")["schedules"]
    assert daily["name"] == "daily" and daily["job"] == "dated" and daily["paused"] is False
    assert utc_iso(daily["next_fire_time"])

    # A second daemon on the same socket (with a database of its own: on the same SQLite
    # file it would be refused before) refuses to start and leaves the first one alone.
    own_database = launched.daemon.config_path.read_text().replace("batchd.db", "second.db")
    second = DaemonProcess(tmp_path, own_database)
    try:
        assert second.wait(30) == 73
    finally:
        second.stop()
    assert "another process already listens" in launched.daemon.output()
    assert control.call("ping")["pid"] == launched.daemon.proc.pid

    # SIGTERM removes the socket file.
    launched.daemon.signal(signal.SIGTERM)
    assert launched.daemon.wait(30) == 0
    assert not path.exists()


def test_start_execution_and_executions(launch: Launch, tmp_path: Path) -> None:
    control = launch().connect()
    first = control.call("start", job="dated", params={"date": "2026-11-01"})
    assert set(first) == EXECUTION_KEYS
    assert first["job"] == "dated" and first["params"] == {"date": "2026-11-01"}
    assert first["status"] in ("STARTING", "STARTED") and utc_iso(first["create_time"])
    done = control.wait_for_status(first["id"], "COMPLETED")
    assert done["node"] == socket.gethostname()
    assert done["instance_id"] == first["instance_id"]
    assert utc_iso(done["start_time"]) and utc_iso(done["end_time"])
    [step] = done["steps"]
    assert set(step) == STEP_KEYS
    assert step["name"] == "note" and step["status"] == "COMPLETED"
    assert utc_iso(step["start_time"]) and utc_iso(step["end_time"])

    # Parameters may also come as a JSON string.
    second = control.call("start", job="dated", params='{"date": "2026-11-02"}')
    control.wait_for_status(second["id"], "COMPLETED")
    failed = control.call("start", job="count_file", params={"file": str(tmp_path / "no.txt")})
    failed = control.wait_for_status(failed["id"], "FAILED")
    assert "no.txt" in failed["exit_message"]

    newest_first = [failed["id"], second["id"], first["id"]]
    assert ids(control.call("executions")["executions"]) == newest_first
    assert ids(control.call("executions", job="dated")["executions"]) == newest_first[1:]
    assert ids(control.call("executions", status="FAILED")["executions"]) == [failed["id"]]
    assert ids(control.call("executions", limit=2)["executions"]) == newest_first[:2]
    assert control.call("executions", job="dated", status="FAILED") == {"executions": []}
    assert control.call("execution", id=str(first["id"]))["id"] == first["id"]

    assert control.error("start", job="nope")["type"] == "NoSuchJob"
    invalid = control.error("start", job="dated", params={"date": "someday"})
    assert invalid["type"] == "InvalidJobParameters" and "date" in invalid["message"]
    again = control.error("start", job="dated", params={"date": "2026-11-01"})
    assert again["type"] == "JobInstanceAlreadyComplete"
    assert control.error("execution", id=999999)["type"] == "NoSuchJobExecution"


def test_stop_restart_and_abandon(launch: Launch, tmp_path: Path) -> None:
    control = launch().connect()
    numbers = numbers_file(tmp_path / "numbers.txt", 300)  # 0.01 s a number: 3 s in all
    running = control.call("start", job="count_file", params={"file": str(numbers)})

    def committed() -> bool:
        steps = control.call("execution", id=running["id"])["steps"]
        return bool(steps) and steps[0]["commit_count"] > 0

    wait_until(committed)
    stopped = control.call("stop", job="count_file")["stopped"]
    assert ids(stopped) == [running["id"]] and stopped[0]["status"] == "STOPPING"
    assert control.wait_for_status(running["id"], "STOPPED")["steps"][0]["status"] == "STOPPED"
    # Ended: not an error.
    assert control.call("stop", id=running["id"]) == {"stopped": [], "backfills": []}

    # By id, given as a string of digits in "job" (DESIGN §3.1).
    restarted = control.call("restart", job=str(running["id"]))
    assert restarted["instance_id"] == running["instance_id"]
    assert restarted["id"] != running["id"] and restarted["status"] in ("STARTING", "STARTED")
    control.wait_for_status(restarted["id"], "COMPLETED")
    assert control.error("restart", job="count_file")["type"] == "JobRestartError"

    lost = control.call("start", job="count_file", params={"file": str(tmp_path / "gone.txt")})
    control.wait_for_status(lost["id"], "FAILED")
    abandoned = control.call("abandon", id=lost["id"])
    assert abandoned["id"] == lost["id"] and abandoned["status"] == "ABANDONED"
    assert control.error("restart", id=lost["id"])["type"] == "JobRestartError"
    assert control.error("abandon", id=restarted["id"])["type"] == "JobInstanceAlreadyComplete"
    assert control.error("stop", job="nope")["type"] == "NoSuchJob"
    assert control.error("abandon", id=424242)["type"] == "NoSuchJobExecution"

    # Restart by job name: the newest instance.
    failing = tmp_path / "later.txt"
    failed = control.call("start", job="count_file", params={"file": str(failing)})
    control.wait_for_status(failed["id"], "FAILED")
    numbers_file(failing, 3)
    again = control.call("restart", job="count_file")
    assert again["instance_id"] == failed["instance_id"]
    assert control.wait_for_status(again["id"], "COMPLETED")["steps"][0]["write_count"] == 3


def test_pause_resume_and_fire(launch: Launch) -> None:
    control = launch(extra=SCHEDULE).connect()
    assert control.call("pause", schedule="daily") == {"schedule": "daily", "paused": True}
    [daily] = control.call("schedules")["schedules"]
    assert daily["paused"] is True and daily["next_fire_time"] is None

    fired = control.call("fire", schedule="daily")
    assert fired["schedule"] == "daily" and fired["outcome"] == "started"
    assert fired["params"] == {"date": datetime.now(UTC).date().isoformat()}
    assert utc_iso(fired["fire_time"])
    execution = control.wait_for_status(fired["execution_id"], "COMPLETED")
    assert execution["job"] == "dated" and execution["params"] == fired["params"]

    assert control.call("resume", schedule="daily") == {"schedule": "daily", "paused": False}
    [daily] = control.call("schedules")["schedules"]
    assert daily["paused"] is False and utc_iso(daily["next_fire_time"])
    assert utc_iso(daily["last_fire"]) and daily["last_outcome"] == "started"
    for op in ("fire", "pause", "resume"):
        assert control.error(op, schedule="nightly")["type"] == "NoSuchSchedule"


def test_backfill(launch: Launch) -> None:
    control = launch().connect()
    work = {"seconds": 0.4}
    done = control.call("start", job="slow_dated", params={"date": "2026-11-02", **work})
    control.wait_for_status(done["id"], "COMPLETED")
    span = {"from": "2026-11-01", "to": "2026-11-06"}
    plan = control.call("backfill", job="slow_dated", params=work, dry_run=True, **span)
    expected = ["2026-11-01", "2026-11-03", "2026-11-04", "2026-11-05", "2026-11-06"]
    assert plan["dates"] == expected
    assert plan["skipped"] == [
        {"date": "2026-11-02", "status": "COMPLETED", "execution_id": done["id"]}
    ]
    assert plan["dry_run"] is True and plan["max_concurrent"] == 2 and plan["param"] == "date"
    assert ids(control.call("executions", job="slow_dated")["executions"]) == [done["id"]]

    begun = time.monotonic()
    run = control.call("backfill", job="slow_dated", params=work, **span)
    assert time.monotonic() - begun < 1.0  # it returns at once; the runs go on
    assert run["dates"] == expected and run["dry_run"] is False

    def all_complete() -> list[dict[str, Any]] | None:
        found = control.call("executions", job="slow_dated")["executions"]
        complete = [e for e in found if e["status"] == "COMPLETED"]
        return complete if len(complete) == 6 else None

    executions = wait_until(all_complete, timeout=30)
    assert isinstance(executions, list)
    backfilled = [e for e in executions if e["id"] != done["id"]]
    assert sorted(e["params"]["date"] for e in backfilled) == expected
    # At most max_concurrent (2) ran at any moment, and it did run two at once.
    spans = [
        (datetime.fromisoformat(e["start_time"]), datetime.fromisoformat(e["end_time"]))
        for e in backfilled
    ]
    overlap = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert overlap == 2

    again = control.call("backfill", job="slow_dated", params=work, dry_run=True, **span)
    assert again["dates"] == [] and len(again["skipped"]) == 6

    reversed_span = {"from": "2026-11-06", "to": "2026-11-01"}
    assert control.error("backfill", job="slow_dated", **reversed_span)["type"] == "BadRequest"
    assert control.error("backfill", job="nope", **span)["type"] == "NoSuchJob"
    bad_date = control.error("backfill", job="slow_dated", **{"from": "2026-13-01", "to": "x"})
    assert bad_date["type"] == "BadRequest" and "'from'" in bad_date["message"]
    wrong = control.error("backfill", job="slow_dated", params={"seconds": "long"}, **span)
    assert wrong["type"] == "InvalidJobParameters"


def test_reload(launch: Launch, tmp_path: Path) -> None:
    launched = launch()
    control = launched.connect()
    assert control.call("schedules") == {"schedules": []}
    launched.daemon.config_path.write_text(control_config(tmp_path, SCHEDULE))
    assert control.call("reload") == {
        "accepted": True,
        "error": None,
        "schedules": 1,
        "watches": 0,
    }
    assert [s["name"] for s in control.call("schedules")["schedules"]] == ["daily"]
    launched.daemon.config_path.write_text(control_config(tmp_path, "[[schedules]]\nname = 1\n"))
    refused = control.call("reload")
    assert refused["accepted"] is False and refused["schedules"] == 1
    assert refused["error"].startswith("schedules[0].name: ")  # why, naming the key
    assert [s["name"] for s in control.call("schedules")["schedules"]] == ["daily"]


def test_recover_and_a_stale_socket_file(launch: Launch, tmp_path: Path) -> None:
    # A socket file left by a daemon that was killed: nobody listens, so it is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "control.sock"))
    stale.close()
    control = launch().connect()
    assert control.call("recover")["recovered"] == []

    orphan = orphan_execution(tmp_path)
    [recovered] = control.call("recover")["recovered"]
    assert recovered["id"] == orphan and recovered["status"] == "FAILED"
    assert "recovered" in recovered["exit_message"]
    assert control.call("recover")["recovered"] == []


def test_purge_keeps_incomplete_instances(launch: Launch, tmp_path: Path) -> None:
    import tests.daemon.daemon_jobs  # noqa: F401 - registers the jobs
    from batchd.shortcuts import default_registry

    url = f"sqlite:///{tmp_path / 'batchd.db'}"
    began = datetime.now(UTC)

    def long_ago() -> datetime:  # 100 days ago, ticking
        return datetime.now(UTC) - timedelta(days=100)

    def missing(name: str) -> dict[str, str]:
        return {"file": str(tmp_path / name)}

    with JobOperator(SqlJobRepository(url, clock=long_ago), default_registry) as old:
        complete = old.start("dated", {"date": "2026-01-01"})  # purged, instance too
        incomplete = old.start("count_file", missing("b.txt"))  # FAILED: kept, however old
        abandoned = old.abandon(old.start("count_file", missing("c.txt")).id)  # purged
        first_try = old.start("count_file", missing("d.txt"))
        numbers_file(tmp_path / "d.txt", 4)
        second_try = old.restart(first_try.id)  # complete after a restart: both purged
        old_failure = old.start("count_file", missing("e.txt"))
    numbers_file(tmp_path / "e.txt", 2)
    with JobOperator(SqlJobRepository(url), default_registry) as new:
        recent_success = new.restart(old_failure.id)  # the old failure goes, this stays
        recent = new.start("dated", {"date": "2026-01-02"})
    history = (complete, incomplete, abandoned, second_try, recent_success)
    assert [e.status for e in history] == PURGE_HISTORY
    purged_ids = {complete.id, abandoned.id, first_try.id, second_try.id, old_failure.id}
    kept_ids = {incomplete.id, recent_success.id, recent.id}

    launched = launch()
    control = launched.connect()
    before = table_counts(launched.database)
    assert control.call("purge", days=200)["executions"] == 0
    dry = control.call("purge", days=30, dry_run=True)
    assert table_counts(launched.database) == before
    step_rows = sum(
        len(control.call("execution", id=execution_id)["steps"]) for execution_id in purged_ids
    )
    assert dry == {
        "days": 30,
        "before": dry["before"],
        "dry_run": True,
        "executions": 5,
        "step_executions": step_rows,
        "instances": 3,
    }
    cutoff = datetime.fromisoformat(dry["before"])
    assert began - timedelta(days=30, minutes=1) < cutoff < datetime.now(UTC) - timedelta(days=29)

    result = control.call("purge", days=30)
    assert {key: result[key] for key in ("executions", "step_executions", "instances")} == {
        "executions": 5,
        "step_executions": step_rows,
        "instances": 3,
    }
    assert set(ids(control.call("executions")["executions"])) == kept_ids
    after = table_counts(launched.database)
    assert after["batch_job_instance"] == before["batch_job_instance"] - 3
    assert after["batch_job_execution_context"] == 3
    assert after["batch_step_execution"] == before["batch_step_execution"] - step_rows
    assert after["batch_step_context"] < before["batch_step_context"]
    for execution_id in purged_ids:
        assert control.error("execution", id=execution_id)["type"] == "NoSuchJobExecution"

    # The incomplete instance is whole: it can still be restarted to completion.
    numbers_file(tmp_path / "b.txt", 3)
    restarted = control.call("restart", id=incomplete.id)
    assert restarted["instance_id"] == incomplete.instance_id
    control.wait_for_status(restarted["id"], "COMPLETED")
    # Now complete, its old failure is history like any other; the instance stays.
    again = control.call("purge", days=30)
    assert (again["executions"], again["instances"]) == (1, 0)
    assert control.call("execution", id=restarted["id"])["status"] == "COMPLETED"

    assert control.error("purge", days=0)["type"] == "BadRequest"
    assert control.error("purge", days="30")["type"] == "BadRequest"
    assert control.error("purge")["type"] == "BadRequest"


def test_repository_purge(database_url: str) -> None:
    """SqlJobRepository.purge itself, on SQLite and on PostgreSQL."""
    broken: set[str] = set()

    def work(ctx: StepContext) -> None:
        if ctx.params["name"] in broken:
            raise RuntimeError("broken")

    registry = JobRegistry()
    registry.register(JobBuilder("flaky").step(StepBuilder("work").tasklet(work).build()).build())

    def long_ago() -> datetime:
        return datetime.now(UTC) - timedelta(days=100)

    def run(name: str) -> dict[str, str]:
        return {"name": name}

    with JobOperator(SqlJobRepository(database_url, clock=long_ago), registry) as old:
        complete = old.start("flaky", run("a"))
        broken.update("bcde")
        incomplete = old.start("flaky", run("b"))
        abandoned = old.abandon(old.start("flaky", run("c")).id)
        first_try = old.start("flaky", run("d"))
        broken.discard("d")
        second_try = old.restart(first_try.id)
        old_failure = old.start("flaky", run("e"))
    broken.discard("e")
    with JobOperator(SqlJobRepository(database_url), registry) as new:
        recent_success = new.restart(old_failure.id)
        recent = new.start("flaky", run("f"))
    history = (complete, incomplete, abandoned, second_try, recent_success)
    assert [e.status for e in history] == PURGE_HISTORY

    repository = SqlJobRepository(database_url)
    try:
        everything = {e.id for e in repository.list_executions(limit=100)}
        cutoff = datetime.now(UTC) - timedelta(days=30)
        assert repository.purge(cutoff - timedelta(days=100)) == PurgeResult(0, 0, 0)
        assert repository.purge(cutoff, dry_run=True) == PurgeResult(5, 5, 3)
        assert {e.id for e in repository.list_executions(limit=100)} == everything
        assert repository.purge(cutoff) == PurgeResult(5, 5, 3)
        remaining = {e.id for e in repository.list_executions(limit=100)}
        assert remaining == {incomplete.id, recent_success.id, recent.id}
        for gone in (complete, abandoned, second_try):
            assert repository.get_instance(gone.instance_id) is None
        for kept in (incomplete, recent_success, recent):
            assert repository.get_instance(kept.instance_id) is not None
        with repository.reading() as conn:
            contexts = conn.execute(
                select(step_context.c.instance_id).where(step_context.c.step_name == "work")
            ).scalars()
            kept_instances = {incomplete.instance_id, recent.instance_id, old_failure.instance_id}
            assert set(contexts) == kept_instances
        # The incomplete instance is whole: its restart still completes.
        broken.clear()
        with JobOperator(repository, registry) as new:
            assert new.restart(incomplete.id).status == "COMPLETED"
        assert repository.purge(cutoff) == PurgeResult(1, 1, 0)
    finally:
        repository.dispose()


# ------------------------------------------------------------------------------ bad input


BAD_REQUESTS = [
    (b'{"op": "ping"', "BadRequest", "JSON"),
    (b"[1, 2]", "BadRequest", "object"),
    (b'"ping"', "BadRequest", "object"),
    (b"{}", "BadRequest", "op"),
    (b'{"op": 5}', "BadRequest", "op"),
    (b'{"op": "explode"}', "UnknownOperation", "explode"),
    (b'{"v": 2, "op": "ping"}', "UnsupportedVersion", "2"),
    (b'{"v": "1", "op": "ping"}', "UnsupportedVersion", "1"),
    (b'{"op": "executions", "limit": "ten"}', "BadRequest", "limit"),
    (b'{"op": "executions", "limit": 5000}', "BadRequest", "limit"),
    (b'{"op": "executions", "status": "DONE"}', "BadRequest", "status"),
    (b'{"op": "execution", "id": true}', "BadRequest", "id"),
    (b'{"op": "execution", "id": 1e3}', "BadRequest", "id"),
    (b'{"op": "execution", "id": 99999999999999999999999}', "BadRequest", "id"),
    (b'{"op": "execution"}', "BadRequest", "id"),
    (b'{"op": "start", "job": "dated", "params": 5}', "BadRequest", "params"),
    (b'{"op": "start", "job": ["dated"]}', "BadRequest", "job"),
    (b'{"op": "start", "job": "a\\u0000b"}', "BadRequest", "job"),
    (b'{"op": "ping", "colour": "blue"}', "BadRequest", "colour"),
    (b'{"op": "stop"}', "BadRequest", "job"),
    (b'{"op": "stop", "job": "dated", "id": 1}', "BadRequest", "exactly one"),
    (b'{"op": "purge", "days": 1.5}', "BadRequest", "days"),
    (
        b'{"op": "backfill", "job": "dated", "from": "yesterday", "to": "2026-11-02"}',
        "BadRequest",
        "from",
    ),
    (
        b'{"op": "backfill", "job": "dated", "from": "2026-11-01", "to": "2026-11-02",'
        b' "dry_run": "yes"}',
        "BadRequest",
        "dry_run",
    ),
    (b"\xff\xfe{}", "BadRequest", "UTF-8"),
    (b"", "BadRequest", "empty"),
    (b"   ", "BadRequest", "empty"),
    (b"[" * 60000, "BadRequest", "JSON"),  # deeper than the parser's recursion limit
]


def test_bad_requests_get_error_responses(launch: Launch, tmp_path: Path) -> None:
    launched = launch()
    control = launched.connect()
    for raw, error_type, word in BAD_REQUESTS:
        response = control.request(raw)
        assert response["ok"] is False, raw
        assert response["error"]["type"] == error_type, (raw, response)
        assert word in response["error"]["message"], (raw, response)
    assert control.call("ping")["pong"] is True  # the same connection still serves

    # Several requests in one write, answered in order; CRLF line ends are fine.
    control.send(b'{"op": "ping"}\r\n{"op": "jobs"}\n{"op": "nope"}\n')
    assert control.read_response()["result"]["pong"] is True
    assert "jobs" in control.read_response()["result"]
    assert control.read_response()["error"]["type"] == "UnknownOperation"

    # A line of exactly 64 KiB is read (and refused for its unknown argument); one byte
    # more is too large, and the connection is closed.
    prefix, suffix = b'{"op": "ping", "pad": "', b'"}'
    exact = prefix + b"x" * (MAX_REQUEST_BYTES - len(prefix) - len(suffix)) + suffix
    assert len(exact) == MAX_REQUEST_BYTES
    response = control.request(exact)
    assert response["error"]["type"] == "BadRequest" and "pad" in response["error"]["message"]
    response = control.request(exact + b" ")
    assert response["error"]["type"] == "RequestTooLarge"
    assert control.sock.recv(100) == b""

    # A megabyte without a newline: refused long before the end.
    flood = launched.connect()
    try:
        flood.send(b"x" * 1_000_000)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert flood.read_response()["error"]["type"] == "RequestTooLarge"

    assert launched.connect().call("ping")["pid"] == launched.daemon.proc.pid
    assert launched.daemon.proc.poll() is None


def test_silent_and_half_line_clients_block_nobody(launch: Launch) -> None:
    launched = launch()
    silent = [launched.connect().open() for _ in range(10)]
    half = launched.connect()
    half.send(b'{"op": "pi')
    gone = launched.connect()
    gone.send(b'{"op": "executions", "li')
    gone.close()

    begun = time.monotonic()
    control = launched.connect()
    assert control.call("ping")["pong"] is True
    assert control.call("executions") == {"executions": []}
    assert time.monotonic() - begun < 1.0

    # After the read timeout (5 s) the silent and the half-line clients are dropped.
    for client in [*silent, half]:
        client.sock.settimeout(15)
    assert silent[0].sock.recv(100) == b""
    assert 3 < time.monotonic() - begun < 12
    assert half.sock.recv(100) == b""
    assert all(client.sock.recv(100) == b"" for client in silent[1:])
    assert launched.connect().call("ping")["pong"] is True


# ------------------------------------------------------------------------ peer credentials


def request_as(user: str, path: Path, line: bytes) -> dict[str, Any]:
    """Send ``line`` to the socket from a child process running as ``user``; its response
    (or ``{"closed": ...}`` / ``{"client_error": ...}``)."""
    entry = pwd.getpwnam(user)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the user, ask, report through the pipe
        status = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(10)
            client.connect(str(path))
            try:
                client.sendall(line)
            except BrokenPipeError:
                pass  # refused before the request was sent: the answer is there to read
            data = b""
            while not data.endswith(b"\n"):
                chunk = client.recv(4096)
                if not chunk:
                    break
                data += chunk
            report = data if data else json.dumps({"closed": True}).encode()
        except BaseException as problem:
            report = json.dumps({"client_error": repr(problem)}).encode()
            status = 1
        os.write(write_end, report)
        os._exit(status)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="running a client as nobody needs root")
def test_peers_are_checked_with_so_peercred(launch: Launch) -> None:
    nobody = pwd.getpwnam("nobody")
    # pytest's temp dirs are 0700: the socket goes where nobody can reach it.
    public = Path(tempfile.mkdtemp(prefix="batchd-ctl-", dir="/tmp"))
    public.chmod(0o755)
    path = public / "control.sock"
    ping = b'{"v": 1, "op": "ping"}\n'
    try:
        refused = launch(socket_path=path, mode="0666")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        response = request_as("nobody", path, ping)
        assert response.get("ok") is False, response
        assert response["error"]["type"] == "PermissionDenied"
        assert str(nobody.pw_uid) in response["error"]["message"]
        assert refused.connect().call("ping")["pong"] is True  # root may
        refused.daemon.signal(signal.SIGTERM)
        assert refused.daemon.wait(30) == 0

        by_user = launch(socket_path=path, mode="0666", allowed_users=["nobody"])
        assert request_as("nobody", path, ping)["result"]["pong"] is True
        by_user.daemon.signal(signal.SIGTERM)
        assert by_user.daemon.wait(30) == 0

        group = grp.getgrgid(nobody.pw_gid).gr_name
        launch(socket_path=path, mode="0666", allowed_groups=[group])
        assert request_as("nobody", path, ping)["result"]["pong"] is True
    finally:
        shutil.rmtree(public, ignore_errors=True)


# ------------------------------------------------------------------------ random requests

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
# Every operation except reload (which changes no data but re-imports the job modules).
OPS = sorted(op for op in OPERATIONS if op != "reload")
ARGUMENTS = sorted({name for operation in OPERATIONS.values() for name in operation.args})
operation_requests = st.builds(
    lambda op, args, version: json.dumps({**args, "op": op, **version}).encode(),
    st.sampled_from(OPS) | st.text(max_size=10),
    st.dictionaries(st.sampled_from(ARGUMENTS) | st.text(max_size=6), json_values, max_size=4),
    st.just({}) | st.fixed_dictionaries({"v": st.just(1) | json_values}),
)
random_lines = st.one_of(
    operation_requests,
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200).map(lambda data: data.replace(b"\n", b"")),
)


@dataclass
class RandomTarget:
    launched: Launched
    control: Control
    before: tuple[dict[str, int], Any]

    def snapshot(self) -> tuple[dict[str, int], Any]:
        """Rows per table, and every execution as the daemon sends it."""
        return table_counts(self.launched.database), self.control.call("executions", limit=1000)


@pytest.fixture
def random_target(launch: Launch) -> RandomTarget:
    """A daemon whose repository holds completed executions only (so no random request can
    stop, restart or abandon anything), and whose jobs all need typed parameters."""
    launched = launch()
    control = launched.connect()
    for day in ("2026-11-01", "2026-11-02"):
        started = control.call("start", job="dated", params={"date": day})
        control.wait_for_status(started["id"], "COMPLETED")
    target = RandomTarget(launched, control, ({}, None))
    target.before = target.snapshot()
    return target


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lines=st.lists(random_lines, min_size=5, max_size=40))
def test_random_requests_change_nothing(random_target: RandomTarget, lines: list[bytes]) -> None:
    target = random_target
    for line in lines:
        response = target.control.request(line)
        assert isinstance(response["ok"], bool), (line, response)
        if not response["ok"]:
            error = response["error"]
            assert isinstance(error["type"], str) and isinstance(error["message"], str)
            if error["type"] == "RequestTooLarge":  # the server closed this connection
                target.control = target.launched.connect()
    assert target.control.call("ping")["pong"] is True
    assert target.snapshot() == target.before
