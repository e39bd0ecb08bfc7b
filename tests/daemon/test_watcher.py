"""Watches (DESIGN §4): real files, real watchdog, a real SQLite repository and operator."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from batchd import JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder, StepContext
from batchd.daemon.settings import WatchSettings
from batchd.daemon.templates import TemplateError
from batchd.daemon.watcher import TakenFile, Watcher, validate_watch, watch_variables
from batchd.model import BatchStatus
from batchd.repository import TriggerStore

JOB = "import_file"
CSV_REGEX = r"payments_(?P<region>[a-z]+)_(?P<day>\d{4}-\d{2}-\d{2})\.csv"


class ImportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    date: dt.date
    region: str = "eu"


@dataclass
class Seen:
    """What the job saw: its parameters and the content of the file at ``file``."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, ctx: StepContext) -> None:
        params = ctx.params
        path = Path(params.file)
        content = path.read_text() if path.exists() else None
        with self.lock:
            self.runs.append({"params": params.model_dump(mode="json"), "content": content})


class Outcomes:
    """A listener recording ``on_watch_file`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def on_watch_file(self, watch: str, outcome: str) -> None:
        self.calls.append((watch, outcome))


@dataclass
class Env:
    tmp: Path
    inbox: Path
    operator: JobOperator
    store: TriggerStore
    seen: Seen
    listener: Outcomes
    watchers: list[Watcher] = field(default_factory=list)

    def watch(
        self, name: str = "payments", directory: Path | None = None, **kw: Any
    ) -> WatchSettings:
        kw.setdefault("params", {"file": "{path}", "date": "{mtime_date}"})
        kw.setdefault("stable_for", "0.3s")
        return WatchSettings(name=name, job=JOB, directory=directory or self.inbox, **kw)

    def watcher(self, *watches: WatchSettings, **kw: Any) -> Watcher:
        watcher = Watcher(
            list(watches) or [self.watch()],
            self.operator,
            self.store,
            listener=self.listener,
            **kw,
        )
        self.watchers.append(watcher)
        return watcher

    def executions(self) -> list[Any]:
        return self.operator.list_executions(job_name=JOB)

    def wait_ended(self, count: int) -> list[Any]:
        """Wait until ``count`` executions exist and have ended; returns them, oldest first."""
        wait_for(lambda: len(self.executions()) >= count)
        executions = sorted(self.executions(), key=lambda e: e.id)
        return [self.operator.wait(e.id, timeout=3) for e in executions]


def wait_for(predicate: Callable[[], object], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(0.02)


def make_old(path: Path, seconds: float = 3600) -> None:
    """Give a file an old mtime (as if dropped while the daemon was down)."""
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)


def reason_of(path: Path) -> str:
    return path.with_name(path.name + ".reason").read_text(encoding="utf-8")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    repository = SqlJobRepository(f"sqlite:///{tmp_path / 'batchd.db'}")
    registry = JobRegistry()
    seen = Seen()
    registry.register(
        JobBuilder(JOB)
        .params_model(ImportParams)
        .step(StepBuilder("read").tasklet(seen).build())
        .build()
    )
    operator = JobOperator(repository, registry, heartbeat=0.2)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    environment = Env(tmp_path, inbox, operator, TriggerStore(repository), seen, Outcomes())
    try:
        yield environment
    finally:
        for watcher in environment.watchers:
            watcher.stop()
        operator.shutdown()
        repository.dispose()


# ------------------------------------------------------------------------ taking files


def test_dropped_file_is_moved_and_runs_the_job_with_path_and_group_params(env: Env) -> None:
    watch = env.watch(
        regex=CSV_REGEX,
        params={"file": "{path}", "date": "{day}", "region": "{region}"},
        stable_for="5s",  # only the close-write can take the file in time
    )
    env.watcher(watch).start()
    dropped = env.inbox / "payments_us_2026-11-21.csv"
    dropped.write_text("id,amount\n1,10\n")

    (execution,) = env.wait_ended(1)
    assert execution.status == BatchStatus.COMPLETED
    processed = env.inbox / "processed" / dropped.name
    assert processed.exists() and not dropped.exists()
    (run,) = env.seen.runs
    assert run == {
        "params": {"file": str(processed), "date": "2026-11-21", "region": "us"},
        "content": "id,amount\n1,10\n",
    }
    digest = hashlib.sha256(b"id,amount\n1,10\n").hexdigest()

    # The claim is finished just after the start (the tiny job may end before that).
    def claim_state() -> object:
        return (env.store.file_claim("payments", dropped.name, digest) or {}).get("state")

    wait_for(lambda: claim_state() == "started")
    claim = env.store.file_claim("payments", dropped.name, digest)
    assert claim is not None
    assert claim["state"] == "started" and claim["job_execution_id"] == execution.id
    assert env.listener.calls == [("payments", "started")]


def test_mtime_variables(env: Env) -> None:
    watch = env.watch(params={"file": "{path}", "date": "{mtime_date}", "region": "{stem}"})
    watcher = env.watcher(watch)
    dropped = env.inbox / "north.csv"
    dropped.write_text("x")
    make_old(dropped)
    mtime = dt.datetime.fromtimestamp(dropped.stat().st_mtime, dt.UTC)

    (taken,) = watcher.scan()
    assert taken.outcome == "started"
    env.wait_ended(1)
    assert env.seen.runs[0]["params"]["date"] == mtime.date().isoformat()
    assert env.seen.runs[0]["params"]["region"] == "north"


def test_file_still_being_written_is_not_taken_before_close(env: Env) -> None:
    env.watcher(env.watch(stable_for="0.2s")).start()
    path = env.inbox / "growing.csv"
    with open(path, "w") as handle:
        for piece in range(4):
            handle.write(f"line {piece}\n")
            handle.flush()
            time.sleep(0.3)  # longer than stable_for: only the open file keeps it here
            assert path.exists(), "taken while its writer still had it open"
            assert not (env.inbox / "processed").exists()
    (execution,) = env.wait_ended(1)
    assert execution.status == BatchStatus.COMPLETED
    assert env.seen.runs[0]["content"] == "line 0\nline 1\nline 2\nline 3\n"


def test_without_close_events_a_growing_file_waits_until_its_size_is_stable(env: Env) -> None:
    watcher = env.watcher(env.watch(stable_for="0.5s"), close_events=False)
    watcher.start()
    assert not watcher.close_events
    path = env.inbox / "growing.csv"
    with open(path, "w") as handle:
        for piece in range(5):
            handle.write(f"line {piece}\n")
            handle.flush()
            time.sleep(0.15)
            assert path.exists(), "taken while still growing"
    (execution,) = env.wait_ended(1)
    assert execution.status == BatchStatus.COMPLETED
    assert env.seen.runs[0]["content"].count("line") == 5


def test_renamed_into_the_directory_is_taken_at_once(env: Env) -> None:
    env.watcher(env.watch(stable_for="10s")).start()
    hidden = env.inbox / ".upload.csv.part"  # hidden: ignored while written
    hidden.write_text("a")
    hidden.rename(env.inbox / "upload.csv")
    outside = env.tmp / "elsewhere.csv"
    outside.write_text("b")
    outside.rename(env.inbox / "elsewhere.csv")  # moved in from another directory

    executions = env.wait_ended(2)
    assert [e.status for e in executions] == [BatchStatus.COMPLETED] * 2
    assert sorted(p.name for p in (env.inbox / "processed").iterdir()) == [
        "elsewhere.csv",
        "upload.csv",
    ]


def test_files_present_before_start_are_taken_at_start_up(env: Env) -> None:
    for name in ("a.csv", "b.csv"):
        (env.inbox / name).write_text(name)
        make_old(env.inbox / name)
    fresh = env.inbox / "c.csv"
    fresh.write_text("c")  # arrived just now: taken once stable

    watcher = env.watcher(env.watch(stable_for="0.3s"))
    watcher.start()
    # The old files were taken by start() itself.
    assert sorted(p.name for p in (env.inbox / "processed").iterdir()) == ["a.csv", "b.csv"]
    executions = env.wait_ended(3)
    assert all(e.status == BatchStatus.COMPLETED for e in executions)
    assert not fresh.exists()
    assert sorted(run["content"] for run in env.seen.runs) == ["a.csv", "b.csv", "c"]


def test_ignored_files_are_left_alone(env: Env) -> None:
    lower = env.watcher(env.watch("lower", regex=r"[a-z]+\.csv"))
    for name in ("notes.txt", "UPPER.csv"):
        (env.inbox / name).write_text("x")
        make_old(env.inbox / name)
    assert lower.scan() == []  # names the regex does not match
    for name in ("notes.txt", "UPPER.csv"):
        (env.inbox / name).unlink()

    everything = env.watcher(env.watch("everything"))  # pattern "*"
    names = [".hidden.csv", "data.csv.reason"]
    for name in names:
        (env.inbox / name).write_text("x")
        make_old(env.inbox / name)
    (env.inbox / "sub.csv").mkdir()
    (env.inbox / "sub.csv" / "inner.csv").write_text("x")
    make_old(env.inbox / "sub.csv" / "inner.csv")
    assert everything.scan() == []
    assert sorted(p.name for p in env.inbox.iterdir()) == sorted([*names, "sub.csv"])
    assert env.executions() == []


def test_name_collisions_in_processed_do_not_overwrite(env: Env) -> None:
    watcher = env.watcher()
    first = env.inbox / "daily.csv"
    for content in ("one", "two"):
        first.write_text(content)
        make_old(first)
        (taken,) = watcher.scan()
        assert taken.outcome == "started"
    env.wait_ended(2)
    processed = sorted((env.inbox / "processed").iterdir())
    assert len(processed) == 2
    assert {p.read_text() for p in processed} == {"one", "two"}
    names = sorted(p.name for p in processed)
    assert "daily.csv" in names
    (other,) = set(names) - {"daily.csv"}
    assert other.startswith("daily.") and other.endswith("Z.csv")


# -------------------------------------------------------------------- JSON triggers


def test_malformed_json_trigger_is_rejected_with_its_reason(env: Env) -> None:
    env.watcher(env.watch(pattern="*.json")).start()
    (env.inbox / "trigger.json").write_text('{"date": "2026-11-21",\n "region": }\n')

    rejected = env.inbox / "rejected" / "trigger.json"
    wait_for(rejected.exists)  # its .reason is written first
    reason = reason_of(rejected)
    assert reason.startswith("malformed JSON trigger")
    assert "line 2 column" in reason
    assert env.executions() == []
    assert env.listener.calls == [("payments", "rejected")]


def test_json_trigger_content_becomes_params_and_wins_over_templates(env: Env) -> None:
    watch = env.watch(pattern="*.json", params={"file": "{path}", "region": "eu"})
    env.watcher(watch).start()
    (env.inbox / "run.json").write_text(json.dumps({"date": "2026-11-21", "region": "us"}))

    (execution,) = env.wait_ended(1)
    assert execution.status == BatchStatus.COMPLETED
    processed = env.inbox / "processed" / "run.json"
    assert execution.params == {"file": str(processed), "date": "2026-11-21", "region": "us"}


def test_json_trigger_that_is_not_an_object_is_rejected(env: Env) -> None:
    watcher = env.watcher(env.watch(pattern="*.json"))
    (env.inbox / "list.json").write_text("[1, 2]")
    make_old(env.inbox / "list.json")
    (taken,) = watcher.scan()
    assert taken.outcome == "rejected"
    assert "expected an object, not list" in reason_of(env.inbox / "rejected" / "list.json")


# ------------------------------------------------------------- at most one instance


def test_same_file_dropped_twice_starts_one_instance(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.watcher(env.watch(stable_for="5s")).start()
    drop = env.inbox / "batch.csv"
    drop.write_text("same content")
    env.wait_ended(1)
    wait_for(lambda: (env.inbox / "processed" / "batch.csv").exists())

    drop.write_text("same content")  # same name, same SHA-256
    rejected = env.inbox / "rejected" / "batch.csv"
    wait_for(rejected.exists)
    assert reason_of(rejected).startswith("already taken at ")
    wait_for(lambda: "batch.csv duplicate: already taken at " in caplog.text)  # said once
    assert len(env.executions()) == 1
    assert env.listener.calls == [("payments", "started"), ("payments", "duplicate")]


def test_instance_already_complete_rejects_the_file_and_finishes_its_claim(env: Env) -> None:
    # Parameters that do not depend on the file: a second file makes the same instance.
    watcher = env.watcher(env.watch(params={"file": "none", "date": "2026-11-21"}))
    for name in ("first.csv", "second.csv"):
        (env.inbox / name).write_text(name)
        make_old(env.inbox / name)
    first, second = watcher.scan()
    assert first.outcome == "started"
    env.operator.wait(first.execution_id or 0, timeout=3)
    # The first may still be running (JobExecutionAlreadyRunning) or be complete.
    assert second.outcome == "rejected"
    reason = reason_of(env.inbox / "rejected" / "second.csv")
    assert "already running" in reason or "already COMPLETED" in reason
    claim = env.store.file_claim(
        "payments", "second.csv", hashlib.sha256(b"second.csv").hexdigest()
    )
    assert claim is not None and claim["state"] == "rejected"


# --------------------------------------------------------------------- bad parameters


def test_params_that_fail_the_params_model_reject_the_file(env: Env) -> None:
    watch = env.watch(params={"file": "{path}", "date": "{stem}"})
    env.watcher(watch).start()
    (env.inbox / "not-a-date.csv").write_text("x")

    rejected = env.inbox / "rejected" / "not-a-date.csv"
    wait_for(rejected.exists)
    reason = reason_of(rejected)
    assert "invalid parameters for job 'import_file'" in reason
    assert "date" in reason
    assert env.executions() == []
    # Rejected before it was claimed: fixed, the same file can be dropped again.
    assert env.store.file_claim("payments", rejected.name, hashlib.sha256(b"x").hexdigest()) is None


def test_symlink_is_refused(env: Env) -> None:
    secret = env.tmp / "secret.csv"
    secret.write_text("do not read")
    env.watcher(env.watch(stable_for="0.2s")).start()
    (env.inbox / "link.csv").symlink_to(secret)

    rejected = env.inbox / "rejected" / "link.csv"
    wait_for(rejected.is_symlink)  # the link moved, not its target
    assert secret.read_text() == "do not read"
    assert "symlink" in reason_of(rejected)
    assert env.executions() == []
    assert env.listener.calls == [("payments", "refused")]


# ------------------------------------------------------------------------ reconfigure


def test_reconfigure_adds_and_removes_watches(env: Env) -> None:
    first = env.watch("first")
    watcher = env.watcher(first)
    watcher.start()
    second_dir = env.tmp / "second"
    second_dir.mkdir()
    (second_dir / "waiting.csv").write_text("waiting")
    make_old(second_dir / "waiting.csv")
    second = env.watch("second", directory=second_dir, stable_for="5s")

    watcher.reconfigure([first, second])
    # The new watch was scanned at once, then observed.
    assert (second_dir / "processed" / "waiting.csv").exists()
    (second_dir / "new.csv").write_text("new")
    wait_for(lambda: (second_dir / "processed" / "new.csv").exists())
    assert [w["name"] for w in watcher.describe()] == ["first", "second"]

    watcher.reconfigure([second])
    (env.inbox / "ignored.csv").write_text("no watch here now")
    time.sleep(0.5)  # longer than first's stable_for and any event delivery
    assert (env.inbox / "ignored.csv").exists()
    (description,) = watcher.describe()
    assert description["name"] == "second" and description["files"] == {"started": 2}
    env.wait_ended(2)


def test_reconfigure_with_a_bad_watch_changes_nothing(env: Env) -> None:
    watcher = env.watcher()
    with pytest.raises(ValueError, match="does not exist"):
        watcher.reconfigure([env.watch("other", directory=env.tmp / "missing")])
    assert [w["name"] for w in watcher.describe()] == ["payments"]


# ------------------------------------------------------------------------- validation


def test_validate_watch_names_what_is_wrong(env: Env) -> None:
    with pytest.raises(TemplateError, match=r"unknown template variable.*nope"):
        validate_watch(env.watch(params={"file": "{nope}"}))
    with pytest.raises(ValueError, match="shadows"):
        validate_watch(env.watch(regex=r"(?P<name>.*)"))
    assert {"path", "region", "day"} <= watch_variables(env.watch(regex=CSV_REGEX))


def test_scan_result_is_a_taken_file(env: Env) -> None:
    watcher = env.watcher()
    (env.inbox / "one.csv").write_text("1")
    make_old(env.inbox / "one.csv")
    (taken,) = watcher.scan("payments")
    assert isinstance(taken, TakenFile)
    assert (taken.watch, taken.name, taken.outcome) == ("payments", "one.csv", "started")
    assert taken.destination == env.inbox.resolve() / "processed" / "one.csv"
    env.wait_ended(1)
    with pytest.raises(KeyError):
        watcher.scan("nope")


def test_special_file_is_refused_without_being_read(env: Env) -> None:
    watcher = env.watcher()
    fifo = env.inbox / "pipe.csv"
    os.mkfifo(fifo)  # reading it would block for ever
    make_old(fifo)
    (taken,) = watcher.scan()
    assert taken.outcome == "refused"
    assert "not a regular file" in reason_of(env.inbox / "rejected" / "pipe.csv")


def test_a_name_that_is_not_utf8_text_is_rejected_once(env: Env) -> None:
    watcher = env.watcher()
    raw = os.fsencode(env.inbox) + b"/caf\xe9.csv"  # Latin-1, as an old sender writes it
    with open(raw, "wb") as file:
        file.write(b"x")
    make_old(Path(os.fsdecode(raw)))
    (taken,) = watcher.scan()
    assert taken.outcome == "rejected"
    rejected = os.fsencode(env.inbox / "rejected")
    assert sorted(os.listdir(rejected)) == [b"caf\xe9.csv", b"caf\xe9.csv.reason"]
    with open(rejected + b"/caf\xe9.csv.reason", "rb") as file:
        reason = file.read().decode("utf-8")
    assert "caf\\xe9.csv" in reason and "is not UTF-8 text" in reason
    assert watcher.scan() == []  # once: nothing is left to retry
    assert env.executions() == []


# ------------------------------------------------------------ regex groups as dates

DAY_REGEX = r"pay_(?P<day>\d{8})\.csv"


def test_a_group_is_read_as_a_date_with_a_strptime_format(env: Env) -> None:
    watch = env.watch(regex=DAY_REGEX, params={"file": "{path}", "date": "{day(%Y%m%d)-1d}"})
    watcher = env.watcher(watch)
    (env.inbox / "pay_20261121.csv").write_text("x")
    make_old(env.inbox / "pay_20261121.csv")
    (taken,) = watcher.scan()
    assert taken.outcome == "started"
    env.wait_ended(1)
    assert env.seen.runs[0]["params"]["date"] == "2026-11-20"


@pytest.mark.parametrize(
    ("template", "name", "shown"),
    [
        ("{day}", "pay_20261121.csv", "(got '20261121')"),  # digits read as a Unix time
        ("{day(%Y%m%d)}", "pay_20261399.csv", "day = '20261399' does not match the date format"),
    ],
)
def test_a_group_that_is_no_date_rejects_the_file_showing_its_value(
    env: Env, template: str, name: str, shown: str
) -> None:
    watcher = env.watcher(env.watch(regex=DAY_REGEX, params={"file": "{path}", "date": template}))
    (env.inbox / name).write_text("x")
    make_old(env.inbox / name)
    (taken,) = watcher.scan()
    assert taken.outcome == "rejected"
    assert shown in reason_of(env.inbox / "rejected" / name)
