"""Several nodes on one repository, given bad input: SQLite shared by two daemons, a node
name taken twice, a clock an hour wrong, the database going away under a running daemon,
two nodes catching up the same missed fires at once. Real daemons (``batchd run``
subprocesses), real SQLite and PostgreSQL (the outage tests stop a private server of their
own); the clock test and the catch-up race run the repository API in-process (a
subprocess's clock cannot be skewed)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from sqlalchemy import create_engine, text

from batchd import BatchStatus, JobOperator, JobRegistry, SqlJobRepository, StepContext
from batchd.ctl import ControlClient, ControlError
from batchd.daemon.scheduler import Scheduler
from batchd.daemon.settings import ScheduleSettings
from batchd.repository import Owner, TriggerStore, utc_now
from batchd.repository.nodes import DatabaseClock, NodeStore
from tests.conftest import running_postgres_server
from tests.daemon.test_daemon import ROOT, DaemonProcess, NotifySocket, wait_until
from tests.pgserver import PostgresServer
from tests.support.jobs import registry_of, tasklet_job

JOBS = '["tests.daemon.daemon_jobs", "tests.daemon.node_fault_jobs"]'


# ---------------------------------------------------------------------------- daemons


def node_config(
    workdir: Path,
    *,
    node: str,
    database_url: str,
    heartbeat: str = "0.3s",
    lease: str = "1.5s",
    recover_every: str = "0.5s",
    metrics: str = "",
    jobs: str = JOBS,
) -> str:
    """A daemon config: its control socket is ``workdir/ctl.sock``."""
    return (
        f'node = "{node}"\n'
        f'database_url = "{database_url}"\n'
        f"jobs = {jobs}\n"
        'stop_grace = "5s"\n'
        f'heartbeat = "{heartbeat}"\n'
        f'lease = "{lease}"\n'
        f'recover_every = "{recover_every}"\n'
        f'[control]\nsocket = "{workdir / "ctl.sock"}"\n'
        f'[metrics]\nlisten = "{metrics}"\n'
    )


@dataclass
class Node:
    daemon: DaemonProcess
    socket: Path

    @property
    def pid(self) -> int:
        return self.daemon.proc.pid

    def call(self, op: str, **args: Any) -> Any:
        with ControlClient(self.socket, timeout=10) as client:
            return client.call(op, **args)

    def status(self, execution_id: int) -> str:
        return str(self.call("execution", id=execution_id)["status"])

    def wait_for_status(self, execution_id: int, status: str, timeout: float = 15) -> None:
        wait_until(lambda: self.status(execution_id) == status, timeout)

    def ready(self) -> Node:
        """Wait for READY=1, then keep reading the notify socket as systemd does (a
        socket nobody reads fills up after net.unix.max_dgram_qlen datagrams, often 10:
        batchd then drops every STATUS= with a warning, and before 0fa7865 its main loop,
        heartbeats included, blocked on it)."""
        try:
            self.daemon.notify.wait_for("READY=1", timeout=30)
        except AssertionError as error:
            raise AssertionError(
                f"{error}\n--- daemon output ---\n{self.daemon.output()}"
            ) from None
        threading.Thread(target=drain, args=(self.daemon.notify,), daemon=True).start()
        return self

    def exit_status(self, timeout: float = 30) -> int:
        return self.daemon.wait(timeout)


def drain(notify: NotifySocket) -> None:
    """Read (and keep) the daemon's notifications until the socket is closed."""
    notify.sock.settimeout(0.2)
    while notify.sock.fileno() != -1:
        try:
            notify.messages.append(notify.sock.recv(4096).decode())
        except TimeoutError:
            continue
        except OSError:
            return


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Starts ``batchd run`` in ``tmp_path/WORKDIR`` (its config, log and control socket);
    every daemon still running at the end is killed."""
    started: list[DaemonProcess] = []

    def start(workdir: str, **settings: str) -> Node:
        directory = tmp_path / workdir
        directory.mkdir()
        daemon = DaemonProcess(directory, node_config(directory, **settings))
        started.append(daemon)
        return Node(daemon, directory / "ctl.sock")

    yield start
    for daemon in started:
        daemon.stop()


def ctl(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """``batchd ctl ARGS`` as a user runs it, for each ARGS, all at the same time (each
    takes most of a second to import batchd); their results in order."""
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "BATCHD_CONFIG")}
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "batchd.cli", "ctl", *args],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for args, process in zip(commands, running, strict=True):
        stdout, stderr = process.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    return results


def nodes_by_name(node: Node) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in node.call("nodes")["nodes"]}


def table_rows(output: str) -> dict[str, list[str]]:
    """The rows of a ``batchd ctl`` table by their first cell."""
    rows = {}
    for line in output.splitlines()[2:]:
        cells = [cell.strip() for cell in line.split("│")]
        rows[cells[0]] = cells
    return rows


# -------------------------------------------------------------- 1. SQLite is for one node


def test_sqlite_refuses_a_second_node(tmp_path: Path, start_node: Callable[..., Node]) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = start_node("first", node="alpha", database_url=url).ready()

    second = start_node("second", node="beta", database_url=url)
    assert second.exit_status() == 78, second.daemon.output()
    output = second.daemon.output()
    assert "SQLite is for one node" in output
    assert f"node 'alpha' (pid {first.pid}" in output
    assert "Use PostgreSQL" in output  # it says what to use instead
    assert not second.socket.exists()

    pong = first.call("ping")
    assert pong["node"] == "alpha" and pong["database"] == "ok"
    assert [n["name"] for n in first.call("nodes")["nodes"]] == ["alpha"]

    # A node that died (SIGKILL: no clean leave) does not hold the file: the next one starts.
    first.daemon.signal(signal.SIGKILL)
    first.exit_status()
    third = start_node("third", node="beta", database_url=url).ready()
    assert third.call("ping")["database"] == "ok"
    assert nodes_by_name(third)["beta"]["pid"] == third.pid


# ------------------------------------------------------- 2. node names on PostgreSQL


@pytest.mark.slow
def test_node_names_on_postgresql(pg_url: str, start_node: Callable[..., Node]) -> None:
    alpha = start_node("alpha", node="alpha", database_url=pg_url).ready()
    # Two at once: the same name again (refused) and another name (accepted).
    twin = start_node("twin", node="alpha", database_url=pg_url)
    beta = start_node("beta", node="beta", database_url=pg_url)
    assert twin.exit_status() == 78, twin.daemon.output()
    assert f"node name 'alpha' is in use by pid {alpha.pid}" in twin.daemon.output()
    beta.ready()

    listed = nodes_by_name(alpha)
    assert set(listed) == {"alpha", "beta"}
    assert listed["alpha"]["pid"] == alpha.pid and listed["beta"]["pid"] == beta.pid
    assert listed["alpha"]["live"] and listed["beta"]["live"]
    assert listed["alpha"]["this"] and not listed["beta"]["this"]
    assert abs(listed["beta"]["clock_skew_seconds"]) < 1  # same machine as the database
    assert alpha.call("ping")["node"] == "alpha"  # the refused twin took nothing over

    sock = str(beta.socket)
    table, as_json = ctl(("nodes", "--socket", sock), ("nodes", "--socket", sock, "--json"))
    assert table.returncode == 0 and as_json.returncode == 0, (table.stderr, as_json.stderr)
    rows = table_rows(table.stdout)
    assert rows["alpha"][2:4] == [str(alpha.pid), "live"]
    assert rows["beta (this)"][2:4] == [str(beta.pid), "live"]
    assert {n["name"]: n["pid"] for n in json.loads(as_json.stdout)["nodes"]} == {
        "alpha": alpha.pid,
        "beta": beta.pid,
    }

    # A clean stop leaves the list.
    beta.daemon.signal(signal.SIGTERM)
    assert beta.exit_status() == 0
    assert set(nodes_by_name(alpha)) == {"alpha"}

    # A killed node stays listed, as lost once its lease has passed.
    gamma = start_node("gamma", node="gamma", database_url=pg_url).ready()
    assert nodes_by_name(alpha)["gamma"]["live"]
    gamma.daemon.signal(signal.SIGKILL)
    gamma.exit_status()
    wait_until(lambda: not nodes_by_name(alpha)["gamma"]["live"], timeout=10)
    [after] = ctl(("nodes", "--socket", str(alpha.socket)))
    lost = table_rows(after.stdout)
    assert lost["gamma"][2:4] == [str(gamma.pid), "lost"]
    assert lost["alpha (this)"][3] == "live"


def test_a_node_whose_start_up_outlasts_its_lease_is_live_once_ready(
    tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    """The warm process imports its job module for longer than the lease: the heartbeat of
    join() is old by READY=1, and the node must not look dead (a twin could take its name)."""
    node = start_node(
        "slow",
        node="slow",
        database_url=f"sqlite:///{tmp_path / 'batchd.db'}",
        lease="1.5s",
        jobs='["tests.daemon.slow_start_jobs"]',
    ).ready()
    assert nodes_by_name(node)["slow"]["live"]


@pytest.mark.slow
def test_a_node_back_from_a_pause_does_not_take_its_name_back(
    pg_url: str, start_node: Callable[..., Node]
) -> None:
    old = start_node("old", node="alpha", database_url=pg_url).ready()
    old.daemon.signal(signal.SIGSTOP)  # frozen (a VM pause, a long GC): no heartbeat
    store = NodeStore(SqlJobRepository(pg_url, upgrade=False))
    try:
        lease = dt.timedelta(seconds=1.5)
        wait_until(lambda: not store.nodes()[0].is_live(utc_now(), lease), timeout=10)
    finally:
        store.repository.dispose()
    # Lost: a new node may have the name, and does.
    new = start_node("new", node="alpha", database_url=pg_url).ready()
    assert nodes_by_name(new)["alpha"]["pid"] == new.pid
    old.daemon.signal(signal.SIGCONT)
    deadline = time.monotonic() + 2  # several heartbeats of both
    while time.monotonic() < deadline:
        assert nodes_by_name(new)["alpha"]["pid"] == new.pid
        time.sleep(0.05)
    # The old node learns at its next heartbeat that it was replaced, and stops.
    assert old.daemon.wait(30) == 78
    assert f"was taken over by pid {new.pid}" in old.daemon.output()


# ----------------------------------------------------------- 3. a clock an hour behind


class RunParams(BaseModel):
    run: str


class Gates:
    """One threading.Event per ``run`` parameter: the ``long`` job waits for its own."""

    def __init__(self) -> None:
        self.events: dict[str, threading.Event] = {}
        self.closed = False

    def __getitem__(self, run: str) -> threading.Event:
        event = self.events.setdefault(run, threading.Event())
        if self.closed:
            event.set()
        return event

    def release_all(self) -> None:
        self.closed = True
        for event in self.events.values():
            event.set()

    def registry(self) -> JobRegistry:
        def wait_for_release(ctx: StepContext) -> None:
            gate = self[ctx.params.run]
            while not gate.wait(0.02):
                ctx.check_stop()

        return registry_of(
            tasklet_job("long", wait_for_release, step="wait", params_model=RunParams)
        )


def an_hour_behind() -> dt.datetime:
    return utc_now() - dt.timedelta(hours=1)


def seconds_off(moment: dt.datetime | None) -> float:
    assert moment is not None
    return abs((moment - utc_now()).total_seconds())


@pytest.fixture
def operators(pg_url: str) -> Iterator[Callable[..., JobOperator]]:
    """JobOperators, each on its own repository object (as on its own node), on one
    PostgreSQL database; all shut down at the end."""
    made: list[JobOperator] = []

    def make(
        host: str, registry: JobRegistry, clock: Callable[[], dt.datetime] = utc_now
    ) -> JobOperator:
        repository = SqlJobRepository(pg_url, clock=clock)
        operator = JobOperator(repository, registry, heartbeat=0.2, host=host)
        made.append(operator)
        return operator

    yield make
    for operator in made:
        operator.shutdown(wait=True)
        operator.repository.dispose()


@pytest.fixture
def gates(operators: Callable[..., JobOperator]) -> Iterator[Gates]:
    """Released at the end (before the operators shut down), however the test ended."""
    made = Gates()
    yield made
    made.release_all()


def started(operator: JobOperator, execution_id: int) -> None:
    wait_until(lambda: operator.get_execution(execution_id).status == BatchStatus.STARTED)


def test_a_skewed_clock_is_neither_recovered_while_alive_nor_trusted_raw(
    operators: Callable[..., JobOperator], gates: Gates
) -> None:
    registry = gates.registry()
    other = operators("other", registry)

    # The node an hour behind, on the database's clock.
    database_clock = DatabaseClock(base=an_hour_behind)
    skewed = operators("skewed", registry, database_clock)
    database_clock.measure(skewed.repository)
    assert database_clock.skew_seconds == pytest.approx(-3600, abs=1)
    assert seconds_off(database_clock()) < 1
    execution = skewed.start_async("long", {"run": "database clock"})
    started(other, execution.id)
    seen = other.get_execution(execution.id)
    assert seconds_off(seen.create_time) < 2 and seconds_off(seen.heartbeat) < 2

    # Another node recovers with a 1 s lease, again and again: the skewed node's heartbeats
    # are on time by the database's clock, so its execution is left alone.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert other.recover(lease=1) == []
        time.sleep(0.1)
    assert other.get_execution(execution.id).status == BatchStatus.STARTED
    gates["database clock"].set()
    ended = skewed.wait(execution.id, timeout=10)
    assert ended.status == BatchStatus.COMPLETED and ended.exit_message is None
    assert seconds_off(ended.end_time) < 2

    # The same node on its raw clock writes heartbeats an hour old: the other node takes
    # its execution for dead at once, although its owner is alive and beating.
    raw = operators("raw", registry, an_hour_behind)
    execution = raw.start_async("long", {"run": "raw clock"})
    started(other, execution.id)
    assert seconds_off(other.get_execution(execution.id).heartbeat) > 3500
    recovered = other.recover(lease=1)
    assert [e.id for e in recovered] == [execution.id]
    assert recovered[0].status == BatchStatus.FAILED
    assert "recovered: no heartbeat from raw:" in (recovered[0].exit_message or "")
    # The owner learns it at its next heartbeat and gives up: FAILED stays.
    ended = raw.wait(execution.id, timeout=10)
    gates["raw clock"].set()
    assert ended.status == BatchStatus.FAILED
    assert raw.get_execution(execution.id).exit_message == recovered[0].exit_message


# ------------------------------------------------- 4. the database goes away and comes back


@pytest.fixture(scope="module")
def _module_server() -> Iterator[PostgresServer]:
    """A server of this module's own: stopping it disturbs no other test."""
    yield from running_postgres_server()


@pytest.fixture
def private_server(_module_server: PostgresServer) -> Iterator[PostgresServer]:
    """This module's own server, running again after each test however it ended."""
    yield _module_server
    if _module_server.paused:
        _module_server.resume()


Samples = dict[str, float]


def metrics_url(node: Node) -> str:
    """The daemon's metrics address, from its log (it listens on port 0)."""
    found = wait_until(lambda: re.search(r"metrics on (http://\S+/metrics)", node.daemon.output()))
    assert isinstance(found, re.Match)
    return str(found.group(1))


def scrape(url: str) -> Samples:
    """Samples by name; labelled ones as ``name{label=value,...}``."""
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def stale_execution(url: str, owner: str) -> int:
    """A STARTED-looking execution of node ``owner`` whose last heartbeat is an hour old."""
    repository = SqlJobRepository(url, clock=an_hour_behind, upgrade=False)
    try:
        execution, _ = repository.create_execution(
            job_name="dated",
            job_key=f"stale-{time.monotonic_ns()}",
            identifying_params={"date": "2030-01-01"},
            params={"date": "2030-01-01"},
            owner=Owner(owner, 1),
            decide=lambda last: None,
        )
    finally:
        repository.dispose()
    return execution.id


def database_down(node: Node, metrics: str) -> bool:
    return node.call("ping")["database"] != "ok" and scrape(metrics)["batchd_database_up"] == 0


def database_up(node: Node, metrics: str) -> bool:
    return node.call("ping")["database"] == "ok" and scrape(metrics)["batchd_database_up"] == 1


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_database_goes_away_and_comes_back(
    tmp_path: Path, private_server: PostgresServer, start_node: Callable[..., Node]
) -> None:
    from tests.daemon.node_fault_jobs import GATED

    url = private_server.create_database("outage")
    solo = start_node("solo", node="solo", database_url=url, lease="1s", metrics="127.0.0.1:0")
    solo.ready()
    metrics = metrics_url(solo)
    samples = scrape(metrics)
    assert samples["batchd_database_up"] == 1
    assert abs(samples["batchd_clock_skew_seconds"]) < 1
    assert samples[f"batchd_node_info{{host={os.uname().nodename},node=solo}}"] == 1
    wait_until(lambda: scrape(metrics)["batchd_nodes_live"] == 1)

    # Work in flight: one execution on the daemon, one on another node (this process).
    registry = JobRegistry()
    registry.register(GATED)
    peer = JobOperator(SqlJobRepository(url), registry, heartbeat=0.2, host="peer")
    gate = tmp_path / "gate"
    try:
        mine = solo.call("start", job="gated", params={"gate": str(gate)})["id"]
        theirs = peer.start_async("gated", {"gate": f"{gate}-peer"}).id
        # STARTED is not enough: until its step waits at the gate, a run still reads and
        # writes the repository (its step's records), and ends UNKNOWN if the database is
        # away then.
        for waiting in (f"{gate}.waiting", f"{gate}-peer.waiting"):
            wait_until(Path(waiting).exists)

        private_server.pause()
        went_away = time.monotonic()
        wait_until(lambda: database_down(solo, metrics), timeout=10)
        assert solo.daemon.proc.poll() is None
        pong = solo.call("ping")
        assert pong["pong"] and pong["node"] == "solo" and pong["database"] != "ok"
        begun = time.monotonic()
        with pytest.raises(ControlError) as refused:
            solo.call("start", job="dated", params={"date": "2030-02-02"})
        assert time.monotonic() - begun < 5  # an error at once, not a hang
        assert "OperationalError" in refused.value.message
        [ping] = ctl(("ping", "--socket", str(solo.socket)))
        assert ping.returncode == 0 and "database ok" not in ping.stdout
        # Away longer than the lease: every heartbeat in the repository is stale when it
        # comes back (the scenario's length, not a wait for a result).
        time.sleep(max(0.0, 2.0 - (time.monotonic() - went_away)))

        private_server.resume()
        wait_until(lambda: database_up(solo, metrics), timeout=20)
        # A node that really is gone (its heartbeat an hour old): once the daemon has
        # recovered it, its recovery trusts heartbeats again...
        ghost = stale_execution(url, "ghost")
        solo.wait_for_status(ghost, "FAILED")
        recovered = solo.call("execution", id=ghost)
        assert "recovered: no heartbeat from ghost:1" in recovered["exit_message"]
        # ...and the two executions that lived through the outage were left running.
        for execution_id in (mine, theirs):
            assert solo.status(execution_id) == "STARTED"
        gate.touch()
        Path(f"{gate}-peer").touch()
        for execution_id in (mine, theirs):
            solo.wait_for_status(execution_id, "COMPLETED")
    finally:
        if private_server.paused:  # the peer's job must be able to end
            private_server.resume()
        gate.touch(exist_ok=True)
        Path(f"{gate}-peer").touch(exist_ok=True)
        peer.shutdown(wait=True)
        peer.repository.dispose()

    after = solo.call("start", job="dated", params={"date": "2030-03-03"})["id"]
    solo.wait_for_status(after, "COMPLETED")

    # The repository holds what happened, and nothing the daemon could not write.
    executions = {e["id"]: e for e in solo.call("executions", limit=100)["executions"]}
    assert set(executions) == {mine, theirs, ghost, after}  # the refused start left nothing
    assert {i: e["status"] for i, e in executions.items()} == {
        mine: "COMPLETED",
        theirs: "COMPLETED",
        ghost: "FAILED",
        after: "COMPLETED",
    }
    assert [e["exit_message"] for i, e in executions.items() if i != ghost] == [None] * 3
    assert executions[mine]["node"] == "solo" and executions[theirs]["node"] == "peer"
    output = solo.daemon.output()
    assert "the database does not answer" in output and "the database answers again" in output
    solo.daemon.signal(signal.SIGTERM)
    assert solo.exit_status() == 0
    assert "Traceback" not in solo.daemon.output().split("the database answers again")[1]


@pytest.mark.postgres
def test_ctl_recover_right_after_an_outage_trusts_no_old_heartbeat(
    private_server: PostgresServer, start_node: Callable[..., Node]
) -> None:
    url = private_server.create_database("recover_after_outage")
    solo = start_node("solo", node="solo", database_url=url, lease="5s", metrics="127.0.0.1:0")
    solo.ready()
    metrics = metrics_url(solo)
    private_server.pause()
    wait_until(lambda: database_down(solo, metrics), timeout=10)
    private_server.resume()
    wait_until(lambda: database_up(solo, metrics), timeout=20)
    # The database has answered the daemon for much less than its 5 s lease: an old
    # heartbeat proves nothing yet (its node may not have reached the database again).
    stale = stale_execution(url, "slow-to-reconnect")
    before = solo.status(stale)
    [recover] = ctl(("recover", "--socket", str(solo.socket), "--json"))
    assert recover.returncode == 0, recover.stderr
    assert json.loads(recover.stdout) == {"recovered": [], "heartbeats_trusted": False}
    assert solo.status(stale) == before != "FAILED"


# ------------------------------------------------ 5. two nodes catch up the same fires


class DateParams(BaseModel):
    date: dt.date


def dated_registry() -> JobRegistry:
    return registry_of(tasklet_job("daily", lambda ctx: None, step="run", params_model=DateParams))


@pytest.mark.timeout(60)
def test_two_nodes_catch_up_each_missed_fire_once(
    pg_url: str, operators: Callable[..., JobOperator]
) -> None:
    today = dt.datetime(2030, 3, 10, 3, 30, tzinfo=dt.UTC)  # half an hour after the fire
    schedule = ScheduleSettings(
        name="eod",
        job="daily",
        cron="30 3 * * *",
        params={"date": "{fire_date}"},
        timezone="UTC",
        catch_up="all",
    )
    fire_times = [(today - dt.timedelta(days=n)).replace(minute=30) for n in (4, 3, 2, 1, 0)]
    schedulers: dict[str, Scheduler] = {}
    for name in ("north", "south"):
        operator = operators(name, dated_registry())
        if name == "north":
            some_operator = operator
        store = TriggerStore(operator.repository, node=name)
        schedulers[name] = Scheduler(
            [schedule], operator, store, timezone="UTC", clock=lambda: today
        )
    schedulers["north"].store.record_fire("eod", fire_times[0])  # the last fire: 4 days ago
    missed = fire_times[1:]
    assert schedulers["south"].missed_fire_times("eod") == missed

    # Both nodes read what they missed, then queue on their first claim until the test lets
    # them go together: each tries every missed fire, as two nodes starting at once do.
    engine = create_engine(pg_url)
    results: dict[str, list[Any]] = {}
    try:
        with engine.connect() as holder:
            holder.execute(text("LOCK TABLE batch_schedule_fire IN EXCLUSIVE MODE"))
            threads = [
                threading.Thread(
                    target=lambda n=name: results.__setitem__(n, schedulers[n].catch_up())
                )
                for name in schedulers
            ]
            for thread in threads:
                thread.start()

            def both_waiting() -> bool:
                waiting = holder.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
                return bool(waiting == 2)

            wait_until(both_waiting, timeout=10)
            holder.commit()  # releases the lock
            for thread in threads:
                thread.join(timeout=30)
    finally:
        engine.dispose()

    # Each node went through every missed fire; each fire started on exactly one of them.
    for name in schedulers:
        assert [r.fire_time for r in results[name]] == missed
    outcomes = {
        fire: sorted(r.outcome for rs in results.values() for r in rs if r.fire_time == fire)
        for fire in missed
    }
    # The node that lost a fire counts it as taken elsewhere.
    assert outcomes == {fire: ["elsewhere", "started"] for fire in missed}
    counts = {name: s.fire_counts() for name, s in schedulers.items()}
    assert sum(c.get(("eod", "started"), 0) for c in counts.values()) == len(missed)
    assert sum(c.get(("eod", "elsewhere"), 0) for c in counts.values()) == len(missed)
    for name, count in counts.items():
        tried = count.get(("eod", "started"), 0) + count.get(("eod", "elsewhere"), 0)
        assert tried == len(missed), name

    # The repository: one execution per missed day, run by the node that claimed the fire.
    executions = some_operator.list_executions("daily", limit=100)
    assert sorted(str(e.params["date"]) for e in executions) == [str(f.date()) for f in missed]
    fires = {f["fire_time"]: f for f in schedulers["north"].store.fires("eod")}
    assert list(fires) == fire_times
    for fire in missed:
        recorded = fires[fire]
        assert recorded["outcome"] == "started"
        ended = some_operator.wait(recorded["job_execution_id"], timeout=10)
        assert ended.status == BatchStatus.COMPLETED
        assert ended.node == recorded["node"]  # started where it was claimed
        winner = next(r for r in results[recorded["node"]] if r.fire_time == fire)
        assert winner.outcome == "started" and winner.execution_id == ended.id
