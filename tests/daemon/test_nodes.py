"""Several daemons (nodes) on one PostgreSQL repository: every fire once, a killed node's
work recovered and restarted elsewhere, control requests reaching across nodes."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from batchd import BatchStatus, SqlJobRepository
from batchd.model import JobExecution
from tests.daemon.daemon_jobs import seen
from tests.daemon.node_jobs import ticks
from tests.daemon.support import Control
from tests.daemon.test_daemon import DaemonProcess, Daemons, drop, wait_until, watch

pytestmark = pytest.mark.postgres

FIRES = int(os.environ.get("BATCHD_TEST_FIRES", "60"))


def node_config(tmp: Path, url: str, name: str, extra: str = "") -> str:
    return (
        f'node = "{name}"\n'
        f'database_url = "{url}"\n'
        'jobs = ["tests.daemon.node_jobs", "tests.daemon.daemon_jobs"]\n'
        "max_concurrent_jobs = 4\n"
        'heartbeat = "0.3s"\n'
        'lease = "1.5s"\n'
        'recover_every = "0.5s"\n'
        'stop_grace = "10s"\n'
        f'[control]\nsocket = "{tmp / name}.sock"\n'
        "[metrics]\nlisten = ''\n" + extra
    )


@pytest.fixture
def start_node(tmp_path: Path, pg_url: str, daemons: Daemons) -> Callable[..., DaemonProcess]:
    """Starts a node (a real ``batchd run``) in a directory of its own."""

    def start(name: str, extra: str = "", env: dict[str, str] | None = None) -> DaemonProcess:
        workdir = tmp_path / name
        workdir.mkdir()
        config = node_config(tmp_path, pg_url, name, extra)
        return daemons.start(workdir, config, {"BATCHD_TEST_NODE": name, **(env or {})})

    return start


def executions_of(url: str, job: str) -> list[JobExecution]:
    repository = SqlJobRepository(url, upgrade=False)
    try:
        return repository.list_executions(job_name=job, limit=10_000)
    finally:
        repository.dispose()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_three_nodes_run_every_fire_once_though_one_is_killed(
    start_node: Callable[..., DaemonProcess], pg_url: str
) -> None:
    engine = create_engine(pg_url)
    ticks.create(engine)
    first = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
    last = first + timedelta(seconds=FIRES - 1)
    # catch_up = "all": on a loaded machine the nodes may come up after ``start``; they
    # then catch up the fires from the start, and those due meanwhile, each once.
    schedule = (
        '[[schedules]]\nname = "every_second"\njob = "tick"\ninterval = "1s"\n'
        f"start = {first.isoformat()}\nend = {last.isoformat()}\n"
        'params = { at = "{fire_time}" }\non_crash = "restart"\ncatch_up = "all"\n'
    )
    env = {"BATCHD_TEST_TICK_SECONDS": "1.5"}
    nodes = {name: start_node(name, schedule, env) for name in ("node-a", "node-b", "node-c")}
    for daemon in nodes.values():
        daemon.notify.wait_for("READY=1", timeout=30)

    # Midway, kill a node while it runs a fire's job: whichever node is seen running one
    # (which node claims a fire is a race the fastest wins; none is promised a share).
    wait_until(lambda: datetime.now(UTC) > first + timedelta(seconds=FIRES // 2), 60, "midway")
    running = wait_until(
        lambda: sorted(
            e.node for e in executions_of(pg_url, "tick") if e.status == BatchStatus.STARTED
        ),
        20,
        "a node to run a job",
    )
    assert isinstance(running, list)
    victim = running[0]
    survivors = sorted(set(nodes) - {victim})
    nodes[victim].signal(signal.SIGKILL)
    nodes[victim].wait(10)
    killed_at = datetime.now(UTC)

    def all_completed() -> bool:
        done = [e for e in executions_of(pg_url, "tick") if e.status == BatchStatus.COMPLETED]
        return len(done) >= FIRES

    try:
        wait_until(all_completed, (last - datetime.now(UTC)).total_seconds() + 60, "every fire")
    except AssertionError:
        executions = executions_of(pg_url, "tick")
        for e in executions:
            if e.status != BatchStatus.COMPLETED:
                print(e.id, e.node, e.status, e.heartbeat, e.exit_message)
        wanted = {(first + timedelta(seconds=n)).isoformat() for n in range(FIRES)}
        print("never started:", sorted(wanted - {e.params["at"] for e in executions}))
        for name, daemon in nodes.items():
            ready = [line for line in daemon.output().splitlines() if "running:" in line]
            print(name, "up:", ready[:1], "(schedule start", first.isoformat() + ")")
        raise
    time.sleep(2)  # a fire run twice would show up now
    for name in survivors:
        nodes[name].signal(signal.SIGTERM)
        assert nodes[name].wait(30) == 0

    for name in survivors:  # the fires the others claimed were taken elsewhere
        assert "every_second fire" in nodes[name].output()
        assert "elsewhere: taken by node node-" in nodes[name].output()
    executions = executions_of(pg_url, "tick")
    completed = Counter(e.instance_id for e in executions if e.status == BatchStatus.COMPLETED)
    assert len(completed) == FIRES and set(completed.values()) == {1}
    fire_times = {e.params["at"] for e in executions}
    assert len(fire_times) == FIRES
    with engine.connect() as conn:
        rows = conn.execute(select(ticks.c.fire_time, ticks.c.node)).all()
    assert Counter(t for t, _ in rows) == Counter({t: 1 for t in fire_times})  # none twice
    # The killed node took part, and its running work was recovered by another node within
    # the lease and restarted there, because the schedule says on_crash = "restart".
    assert victim in {node for _, node in rows}
    recovered = [e for e in executions if e.status == BatchStatus.FAILED]
    assert recovered and all(e.node == victim for e in recovered)
    why = f"recovered: no heartbeat from {victim}"
    assert all(why in (e.exit_message or "") for e in recovered)
    for execution in recovered:
        restarted = [x for x in executions if x.instance_id == execution.instance_id]
        [done] = [x for x in restarted if x.status == BatchStatus.COMPLETED]
        assert done.node in survivors
        assert done.start_time is not None and done.start_time > killed_at
        assert done.start_time < killed_at + timedelta(seconds=1.5 + 3)  # lease + passes
    engine.dispose()


@pytest.mark.timeout(120)
def test_stop_and_restart_sent_to_one_node_act_on_another(
    start_node: Callable[..., DaemonProcess], pg_url: str, tmp_path: Path
) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    for daemon in (a, b):
        daemon.notify.wait_for("READY=1", timeout=30)
    on_a = Control(tmp_path / "node-a.sock").open()
    on_b = Control(tmp_path / "node-b.sock").open()

    nodes = on_b.call("nodes")["nodes"]
    assert [(n["name"], n["live"], n["this"]) for n in nodes] == [
        ("node-a", True, False),
        ("node-b", True, True),
    ]

    started = on_a.call("start", job="long_count", params={"run": 1})
    on_b.wait_for_status(started["id"], "STARTED")
    assert on_b.call("execution", id=started["id"])["node"] == "node-a"

    # The stop goes to node-b, which does not run the job: it is stored in the database,
    # and node-a sees it at its next heartbeat and stops at a chunk boundary.
    on_b.call("stop", id=started["id"])
    stopped = on_a.wait_for_status(started["id"], "STOPPED", timeout=30)
    assert stopped["node"] == "node-a"

    # A restart sent to node-b runs on node-b.
    restarted = on_b.call("restart", id=started["id"])
    running = on_a.wait_for_status(restarted["id"], "STARTED")
    assert running["node"] == "node-b"
    on_a.call("stop", id=restarted["id"])
    assert on_b.wait_for_status(restarted["id"], "STOPPED", timeout=30)["node"] == "node-b"
    listed = {e["id"]: e["node"] for e in on_a.call("executions")["executions"]}
    assert listed == {started["id"]: "node-a", restarted["id"]: "node-b"}


@pytest.mark.timeout(120)
def test_files_dropped_on_a_shared_directory_are_taken_once(
    start_node: Callable[..., DaemonProcess], pg_url: str, tmp_path: Path
) -> None:
    engine = create_engine(pg_url)
    seen.create(engine)  # before the jobs, which would race to create it
    engine.dispose()
    shared = watch(tmp_path)  # tmp_path/drop-numbers, watched by both nodes
    a, b = start_node("node-a", shared), start_node("node-b", shared)
    for daemon in (a, b):
        daemon.notify.wait_for("READY=1", timeout=30)
    directory = tmp_path / "drop-numbers"
    names = [f"batch{i:02d}.txt" for i in range(20)]
    for i, name in enumerate(names):
        drop(directory, name, range(i * 10, i * 10 + 10))

    def all_done() -> bool:
        done = [e for e in executions_of(pg_url, "count_file") if e.status.value == "COMPLETED"]
        return len(done) >= len(names)

    wait_until(all_done, 60, "every file")
    time.sleep(1)  # a file taken twice would show up now
    executions = executions_of(pg_url, "count_file")
    files = Counter(Path(e.params["file"]).name for e in executions)
    assert files == Counter({name: 1 for name in names})
    assert sorted(p.name for p in (directory / "processed").iterdir()) == names
    assert not (directory / "rejected").exists() or not any((directory / "rejected").iterdir())
    assert [p.name for p in directory.iterdir() if p.is_file()] == []
