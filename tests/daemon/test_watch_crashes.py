"""A dropped file is taken exactly once whatever moment its daemon is killed.

Each crash window of the file-take path (between two durable acts: the claim and the move to
processed/, the move and the job start, ...) is a failpoint. A real ``batchd run`` is
SIGKILLed there (``BATCHD_FAILPOINTS``); then the restarted daemon (SQLite), or another node
after the lease (PostgreSQL), finishes the claim: one execution, the file where it belongs,
nothing rejected as a duplicate."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from batchd import BatchStatus, SqlJobRepository
from batchd.repository.tables import trigger_file
from tests.daemon.test_daemon import DaemonProcess, Daemons, config, drop, wait_until

NUMBERS = range(1, 21)


def numbers_watch(inbox: Path, job: str = "count_file", params: str = '{ file = "{path}" }') -> str:
    return (
        f'[[watches]]\nname = "numbers"\njob = "{job}"\ndirectory = "{inbox}"\n'
        f'pattern = "*.txt"\nparams = {params}\nstable_for = "0.2s"\n'
    )


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """The directory the test's watch watches."""
    directory = tmp_path / "inbox"
    directory.mkdir()
    return directory


def start(
    daemons: Daemons, workdir: Path, text: str, failpoint: str | None = None
) -> DaemonProcess:
    """``batchd run`` in ``workdir``, READY; killed at ``failpoint`` if one is named."""
    workdir.mkdir(exist_ok=True)
    env = {"BATCHD_FAILPOINTS": f"{failpoint}=kill"} if failpoint else {}
    daemon = daemons.start(workdir, text, env)
    try:
        daemon.notify.wait_for("READY=1", timeout=30)
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- daemon output ---\n{daemon.output()}") from None
    return daemon


def killed(daemon: DaemonProcess) -> None:
    """Wait for the daemon to die by its failpoint's SIGKILL."""
    status = daemon.wait(30)
    assert status == -signal.SIGKILL, daemon.output()


def claims(url: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(select(trigger_file)).mappings()]
    finally:
        engine.dispose()


def executions(url: str, job: str) -> list[Any]:
    repository = SqlJobRepository(url)
    try:
        return sorted(repository.list_executions(job_name=job, limit=100), key=lambda e: e.id)
    finally:
        repository.dispose()


def seen_numbers(url: str) -> list[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(n for (n,) in conn.execute(text("SELECT number FROM seen_numbers")))
    finally:
        engine.dispose()


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def assert_taken_once(url: str, inbox: Path, node: str | None = None) -> None:
    """One execution of count_file, COMPLETED or FAILED by recovery (killed mid-run), the
    file in processed/, the claim linked to it, nothing rejected."""
    (execution,) = executions(url, "count_file")
    assert execution.status in (BatchStatus.COMPLETED, BatchStatus.FAILED)
    if execution.status == BatchStatus.COMPLETED:
        assert seen_numbers(url) == list(NUMBERS)
    assert listing(inbox / "processed") == ["a.txt"]
    assert listing(inbox / "rejected") == []
    assert [p for p in listing(inbox) if p not in ("processed", "rejected")] == []
    (claim,) = claims(url)
    assert (claim["state"], claim["job_execution_id"]) == ("started", execution.id)
    assert json.loads(claim["params"]) == {"file": str(inbox.resolve() / "processed" / "a.txt")}
    if node is not None:
        assert claim["node"] == node


# ---------------------------------------------------------- one node, restarted (SQLite)


@dataclass
class OneNode:
    """The node of ``workdir/batchd.db`` (the ``sqlite_url`` fixture's), its config with
    ``watch``: started killed at a failpoint, then started again (the same node, restarted)."""

    daemons: Daemons
    workdir: Path
    watch: str

    def start(self, failpoint: str | None = None) -> DaemonProcess:
        return start(self.daemons, self.workdir, config(self.workdir, self.watch), failpoint)


@pytest.mark.parametrize(
    "failpoint", ["watcher.after_claim", "watcher.after_move", "watcher.after_start"]
)
def test_a_file_is_taken_once_after_a_kill_in_any_window_of_its_take(
    tmp_path: Path, daemons: Daemons, inbox: Path, sqlite_url: str, failpoint: str
) -> None:
    node = OneNode(daemons, tmp_path, numbers_watch(inbox))
    first = node.start(failpoint)
    drop(inbox, "a.txt", NUMBERS)
    killed(first)
    assert len(claims(sqlite_url)) == 1 and claims(sqlite_url)[0]["state"] == "claimed"

    node.start()  # the same node, restarted

    def settled() -> bool:
        found = executions(sqlite_url, "count_file")
        return len(found) == 1 and not found[0].status.is_running

    wait_until(settled, 30, "the file's job to end")
    assert_taken_once(sqlite_url, inbox)


def refused_watch(inbox: Path) -> str:
    # Parameters that do not depend on the file: a second file is the same job instance,
    # already COMPLETED, so its start is refused.
    return numbers_watch(inbox, job="dated", params='{ date = "2026-11-21" }')


@pytest.mark.parametrize("failpoint", ["watcher.after_refusal", "watcher.after_rejected_move"])
def test_a_refused_file_is_rejected_once_after_a_kill_while_rejecting_it(
    tmp_path: Path, daemons: Daemons, inbox: Path, sqlite_url: str, failpoint: str
) -> None:
    node = OneNode(daemons, tmp_path, refused_watch(inbox))
    first = node.start(failpoint)
    drop(inbox, "a.txt", range(1, 3))
    wait_until(
        lambda: [e.status for e in executions(sqlite_url, "dated")] == [BatchStatus.COMPLETED]
    )
    drop(inbox, "b.txt", range(1, 3))  # refused: the instance is COMPLETED
    killed(first)

    node.start()
    wait_until(lambda: [c["state"] for c in claims(sqlite_url)] == ["started", "rejected"], 30)
    assert len(executions(sqlite_url, "dated")) == 1
    assert listing(inbox / "processed") == ["a.txt"]
    assert listing(inbox / "rejected") == ["b.txt", "b.txt.reason"]
    reason = (inbox / "rejected" / "b.txt.reason").read_text()
    assert "already COMPLETED" in reason and reason.count("\n") == 1
    assert claims(sqlite_url)[1]["reason"] == reason.strip()


def test_a_rejected_file_is_rejected_once_after_a_kill_between_its_reason_and_its_move(
    tmp_path: Path, daemons: Daemons, inbox: Path, sqlite_url: str
) -> None:
    # "{stem}" is no date: the file is rejected before it is claimed.
    watch = numbers_watch(inbox, job="dated", params='{ date = "{stem}" }')
    node = OneNode(daemons, tmp_path, watch)
    first = node.start("watcher.after_reason")
    drop(inbox, "later.txt", range(1, 3))
    killed(first)
    assert listing(inbox / "rejected") == ["later.txt.reason"]  # the file not beside it yet

    node.start()
    wait_until(lambda: listing(inbox / "rejected") == ["later.txt", "later.txt.reason"], 30)
    assert "invalid parameters for job 'dated'" in (inbox / "rejected/later.txt.reason").read_text()
    assert [p.name for p in inbox.iterdir() if not p.is_dir()] == []
    assert listing(inbox / "processed") == []
    assert executions(sqlite_url, "dated") == []


# ------------------------------------------------- another node, after the lease (PostgreSQL)


def node_config(workdir: Path, url: str, node: str, inbox: Path) -> str:
    return (
        f'node = "{node}"\ndatabase_url = "{url}"\njobs = ["tests.daemon.daemon_jobs"]\n'
        'stop_grace = "5s"\nheartbeat = "0.3s"\nlease = "1.5s"\nrecover_every = "0.5s"\n'
        f'[control]\nsocket = "{workdir / "ctl.sock"}"\n[metrics]\nlisten = ""\n'
        + numbers_watch(inbox)
    )


@pytest.mark.parametrize(
    "failpoint", ["watcher.after_claim", "watcher.after_move", "watcher.after_start"]
)
def test_another_node_finishes_the_claim_of_a_node_that_died_after_the_lease(
    tmp_path: Path, pg_url: str, daemons: Daemons, inbox: Path, failpoint: str
) -> None:
    # The inbox is a directory both nodes watch.
    first = start(
        daemons, tmp_path / "a", node_config(tmp_path / "a", pg_url, "a", inbox), failpoint
    )
    drop(inbox, "a.txt", NUMBERS)
    killed(first)
    (claim,) = claims(pg_url)
    assert (claim["state"], claim["node"]) == ("claimed", "a")

    start(daemons, tmp_path / "b", node_config(tmp_path / "b", pg_url, "b", inbox))

    def settled() -> bool:
        # The claim first: once it says started, its execution exists for the second read.
        started = claims(pg_url)[0]["state"] == "started"
        found = executions(pg_url, "count_file")
        return started and len(found) == 1 and not found[0].status.is_running

    wait_until(settled, 30, "node b to finish node a's claim")
    assert_taken_once(pg_url, inbox, node="b")
