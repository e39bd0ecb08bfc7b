"""Metrics (DESIGN §4): real SQLite repository, real JobOperator running real jobs, real
Scheduler and Watcher; values read from the Prometheus text exposition and parsed with
``prometheus_client.parser``. Also: the HTTP endpoint, the daemon's endpoint across a
restart, the alert rules and the Grafana dashboard."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from batchd import BatchStatus, JobOperator, JobRegistry, SqlJobRepository, StepContext
from batchd.daemon.metrics import (
    CONTROL_OPS,
    DURATION_BUCKETS,
    MAX_CONTROL_OUTCOMES,
    METRIC_NAMES,
    Metrics,
    parse_listen,
)
from batchd.daemon.scheduler import Scheduler
from batchd.daemon.settings import ScheduleSettings, WatchSettings
from batchd.daemon.watcher import Watcher
from batchd.repository import TriggerStore
from tests.daemon.test_daemon import DaemonProcess, config, drop, wait_until, watch
from tests.support.jobs import FaultyReader, chunk_job, registry_of, tasklet_job
from tests.support.processes import dead_owner

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "etc" / "prometheus" / "batchd-alerts.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "batchd-dashboard.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ------------------------------------------------------------------------------ scraping


def parse(text: str) -> Samples:
    """Every sample of an exposition text, keyed by (name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(metrics: Metrics) -> Samples:
    return parse(generate_latest(metrics.registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {key: v for (n, key), v in samples.items() if n == name and wanted <= key}


def wait_counted(env: Env, execution_id: int) -> BatchStatus:
    """Wait for an async execution to end and for the metrics to have counted it (the
    operator tells its observers just after ``wait`` returns)."""
    ended = env.operator.wait(execution_id, timeout=10)
    total = "batchd_job_executions_total"

    def counted() -> bool:
        samples = scrape(env.metrics)
        return (value(samples, total, job=ended.job_name, status=ended.status.value) or 0) >= 1

    wait_until(counted, timeout=5)
    return ended.status


def family_names(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


def exported_sample_names() -> set[str]:
    """Every sample name a Metrics registry exports, with the suffixes Prometheus sees."""
    metrics = Metrics()
    names: set[str] = set()
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        names.add(family.name)
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "info": ("_info",),
        }.get(family.type, ())
        names.update(family.name + suffix for suffix in suffixes)
    return names


# ---------------------------------------------------------------------------------- jobs


class Controls:
    """Switches the test jobs look at."""

    def __init__(self) -> None:
        self.fail = True
        self.gate = threading.Event()  # the blocking job / the slow writer wait for it
        self.gate_reached = threading.Event()


# The numbers jobs read 1..n with FaultyReader(n, bad={7}): reading 7 is a skipped read.
NUMBERS: dict[str, Any] = {"step": "count", "chunk_size": 5, "skip": (ValueError, 5)}


def drop_multiples_of_five(item: int) -> int | None:
    return None if item % 5 == 0 else item


class GatedWriter:
    """Writes the first chunk at once; waits at the second until the gate opens."""

    def __init__(self, controls: Controls) -> None:
        self.controls = controls
        self.chunks = 0

    def write(self, items: list[int]) -> None:
        self.chunks += 1
        if self.chunks == 2:
            self.controls.gate_reached.set()
            assert self.controls.gate.wait(10), "the test never opened the gate"


class DateParams(BaseModel):
    date: dt.date


def make_registry(controls: Controls) -> JobRegistry:
    def flaky(ctx: StepContext) -> None:
        if controls.fail:
            raise RuntimeError("flaky failed as told")

    def blocking(ctx: StepContext) -> None:
        controls.gate_reached.set()
        assert controls.gate.wait(10), "the test never opened the gate"

    def noop(ctx: StepContext) -> None:
        pass

    return registry_of(
        # 20 items, chunks of 5: read 19 (7 is skipped), filtered 5, 10, 15, 20, written 15.
        chunk_job(
            "numbers",
            FaultyReader(20, bad={7}),
            lambda items: None,
            processor=drop_multiples_of_five,
            **NUMBERS,
        ),
        chunk_job("slow_numbers", FaultyReader(12, bad={7}), GatedWriter(controls), **NUMBERS),
        tasklet_job("flaky", flaky, step="run"),
        tasklet_job("blocking", blocking, step="wait"),
        tasklet_job("dated", noop, step="run", params_model=DateParams),
    )


@dataclass
class Env:
    tmp: Path
    url: str
    repository: SqlJobRepository
    controls: Controls
    registry: JobRegistry
    operator: JobOperator
    metrics: Metrics
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def new_metrics(self) -> Metrics:
        """A second Metrics, as a restarted daemon would make (hooks not attached)."""
        metrics = Metrics()
        metrics.initialise_from(self.repository, self.registry.names())
        return metrics


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    url = f"sqlite:///{tmp_path / 'batchd.db'}"
    repository = SqlJobRepository(url)
    controls = Controls()
    registry = make_registry(controls)
    operator = JobOperator(repository, registry, heartbeat=0.2)
    metrics = Metrics()
    metrics.initialise_from(repository, registry.names())
    operator.add_observer(metrics)
    environment = Env(tmp_path, url, repository, controls, registry, operator, metrics)
    try:
        yield environment
    finally:
        controls.gate.set()
        for cleanup in reversed(environment.cleanups):
            cleanup()
        metrics.stop()
        operator.shutdown()
        repository.dispose()


# ------------------------------------------------------------------------- job metrics


def documented_metrics() -> set[str]:
    """The metric families the README names (a counter by its name less ``_total``)."""
    names = re.findall(r"`(batchd_[a-z_]+)", (ROOT / "README.md").read_text())
    return {name.removesuffix("_total") for name in names}


def test_every_metric_of_the_design_is_exported(env: Env) -> None:
    text = generate_latest(env.metrics.registry).decode()
    documented = documented_metrics()
    assert documented <= family_names(text)
    assert set(METRIC_NAMES) <= family_names(text)
    # The README names every metric (METRIC_NAMES) but the three that describe the process,
    # and nothing else.
    assert set(METRIC_NAMES) - documented == {"batchd_up", "batchd_build_info", "batchd_node_info"}
    assert documented <= set(METRIC_NAMES)
    samples = parse(text)
    assert value(samples, "batchd_up") == 1
    assert series(samples, "batchd_build_info")
    # Registered jobs have their series before anything ran.
    assert value(samples, "batchd_job_executions_running", job="numbers") == 0
    assert value(samples, "batchd_job_executions_total", job="flaky", status="FAILED") == 0
    # A registry of its own: nothing of the global one (e.g. no duplicate process metrics).
    assert "process_cpu_seconds" in family_names(text)
    assert DURATION_BUCKETS[0] == 1 and DURATION_BUCKETS[-1] == 6 * 3600


def test_completed_and_failed_executions(env: Env) -> None:
    completed = env.operator.start("numbers")
    assert completed.status == BatchStatus.COMPLETED
    failed = env.operator.start("flaky")
    assert failed.status == BatchStatus.FAILED

    samples = scrape(env.metrics)
    total = "batchd_job_executions_total"
    assert value(samples, total, job="numbers", status="COMPLETED") == 1
    assert value(samples, total, job="numbers", status="FAILED") == 0
    assert value(samples, total, job="flaky", status="FAILED") == 1
    assert value(samples, total, job="flaky", status="COMPLETED") == 0
    assert value(samples, "batchd_job_executions_running", job="numbers") == 0
    assert value(samples, "batchd_job_executions_running", job="flaky") == 0

    last = "batchd_job_last_status"
    assert value(samples, last, job="numbers", status="COMPLETED") == 1
    assert value(samples, last, job="flaky", status="FAILED") == 1
    assert value(samples, last, job="flaky", status="COMPLETED") is None  # never had it

    success = "batchd_job_last_success_timestamp_seconds"
    assert completed.end_time is not None
    assert value(samples, success, job="numbers") == pytest.approx(completed.end_time.timestamp())
    assert value(samples, success, job="flaky") is None  # never completed

    duration = "batchd_job_duration_seconds"
    assert value(samples, duration + "_count", job="numbers") == 1
    assert value(samples, duration + "_count", job="flaky") == 1
    assert completed.start_time is not None
    run_time = (completed.end_time - completed.start_time).total_seconds()
    assert value(samples, duration + "_sum", job="numbers") == pytest.approx(run_time)
    assert value(samples, duration + "_bucket", job="numbers", le="1.0") == 1
    assert value(samples, duration + "_bucket", job="numbers", le="21600.0") == 1

    # The fix is in: the restart completes and becomes the last status.
    env.controls.fail = False
    restarted = env.operator.restart(failed.id)
    assert restarted.status == BatchStatus.COMPLETED
    samples = scrape(env.metrics)
    assert value(samples, total, job="flaky", status="FAILED") == 1
    assert value(samples, total, job="flaky", status="COMPLETED") == 1
    assert value(samples, last, job="flaky", status="FAILED") == 0
    assert value(samples, last, job="flaky", status="COMPLETED") == 1
    assert restarted.end_time is not None
    assert value(samples, success, job="flaky") == pytest.approx(restarted.end_time.timestamp())


def test_step_items_by_kind_including_skipped(env: Env) -> None:
    execution = env.operator.start("numbers")
    assert execution.status == BatchStatus.COMPLETED
    (step,) = execution.step_executions
    # What the repository recorded is what the metrics count, kind by kind.
    assert (step.read_count, step.write_count, step.filter_count, step.skip_count) == (19, 15, 4, 1)

    samples = scrape(env.metrics)
    items = "batchd_step_items_total"
    labels = {"job": "numbers", "step": "count"}
    assert value(samples, items, kind="read", **labels) == 19
    assert value(samples, items, kind="written", **labels) == 15
    assert value(samples, items, kind="filtered", **labels) == 4
    assert value(samples, items, kind="skipped", **labels) == 1

    # A second instance adds its own items; nothing is counted twice.
    env.operator.start("numbers", {"run": 2})
    samples = scrape(env.metrics)
    assert value(samples, items, kind="read", **labels) == 38
    assert value(samples, items, kind="skipped", **labels) == 2


def test_running_gauge_and_items_while_a_step_runs(env: Env) -> None:
    execution = env.operator.start_async("slow_numbers")
    assert env.controls.gate_reached.wait(10)
    time.sleep(1.1)  # past the progress throttle of an earlier scrape (there is none here)
    samples = scrape(env.metrics)
    assert value(samples, "batchd_job_executions_running", job="slow_numbers") == 1
    labels = {"job": "slow_numbers", "step": "count"}
    # The first chunk committed (5 read, 5 written); the second is waiting in its write.
    assert value(samples, "batchd_step_items_total", kind="written", **labels) == 5
    assert value(samples, "batchd_step_items_total", kind="read", **labels) == 5

    env.controls.gate.set()
    assert wait_counted(env, execution.id) == BatchStatus.COMPLETED
    (step,) = env.operator.get_execution(execution.id).step_executions
    samples = scrape(env.metrics)
    assert value(samples, "batchd_job_executions_running", job="slow_numbers") == 0
    assert value(samples, "batchd_step_items_total", kind="read", **labels) == step.read_count == 11
    assert value(samples, "batchd_step_items_total", kind="written", **labels) == 11
    assert value(samples, "batchd_step_items_total", kind="skipped", **labels) == 1
    assert (
        value(samples, "batchd_job_executions_total", job="slow_numbers", status="COMPLETED") == 1
    )


def last_success(samples: Samples, job: str) -> float | None:
    return value(samples, "batchd_job_last_success_timestamp_seconds", job=job)


def test_a_restarted_daemon_gets_the_job_gauges_back_from_the_repository(env: Env) -> None:
    ok = env.operator.start("numbers")
    env.operator.start("flaky")
    running = env.operator.start_async("blocking")
    assert env.controls.gate_reached.wait(10)

    # "Restart": a new Metrics on the same database, which has seen no hook at all.
    samples = scrape(env.new_metrics())
    total = "batchd_job_executions_total"
    assert value(samples, total, job="numbers", status="COMPLETED") == 0  # counters restart
    assert value(samples, total, job="flaky", status="FAILED") == 0
    last = "batchd_job_last_status"
    assert value(samples, last, job="numbers", status="COMPLETED") == 1
    assert value(samples, last, job="flaky", status="FAILED") == 1
    assert ok.end_time is not None
    assert last_success(samples, "numbers") == pytest.approx(ok.end_time.timestamp())
    assert last_success(samples, "flaky") is None
    assert value(samples, "batchd_job_executions_running", job="blocking") == 1
    assert value(samples, "batchd_job_executions_running", job="numbers") == 0
    assert value(samples, "batchd_job_executions_running", job="dated") == 0  # registered only

    env.controls.gate.set()
    assert wait_counted(env, running.id) == BatchStatus.COMPLETED
    samples = scrape(env.new_metrics())
    assert value(samples, "batchd_job_executions_running", job="blocking") == 0
    assert value(samples, last, job="blocking", status="COMPLETED") == 1

    # Every status a job's executions have had gets its series: 1 for the last, 0 else.
    env.controls.fail = False
    fixed = env.operator.restart("flaky")
    samples = scrape(env.new_metrics())
    assert value(samples, last, job="flaky", status="FAILED") == 0
    assert value(samples, last, job="flaky", status="COMPLETED") == 1
    assert fixed.end_time is not None
    assert last_success(samples, "flaky") == pytest.approx(fixed.end_time.timestamp())


def test_initialise_again_picks_up_an_abandon_and_keeps_what_runs_here(env: Env) -> None:
    failed = env.operator.start("flaky")
    running = env.operator.start_async("blocking")
    assert env.controls.gate_reached.wait(10)
    env.operator.abandon(failed.id)  # as `batchd ctl abandon` does, past the hooks

    env.metrics.initialise_from(env.repository)
    samples = scrape(env.metrics)
    last = "batchd_job_last_status"
    assert value(samples, last, job="flaky", status="FAILED") == 0
    assert value(samples, last, job="flaky", status="ABANDONED") == 1
    assert value(samples, "batchd_job_executions_running", job="blocking") == 1
    assert value(samples, "batchd_job_executions_total", job="flaky", status="FAILED") == 1

    env.controls.gate.set()
    assert wait_counted(env, running.id) == BatchStatus.COMPLETED
    env.metrics.initialise_from(env.repository)  # again after the end: still 0 running
    samples = scrape(env.metrics)
    assert value(samples, "batchd_job_executions_running", job="blocking") == 0
    assert value(samples, "batchd_job_executions_total", job="blocking", status="COMPLETED") == 1


def test_recovered_executions_count_as_failed(env: Env) -> None:
    orphan, _ = env.repository.create_execution(
        job_name="dated",
        job_key="k",
        identifying_params={"date": "2026-11-21"},
        params={"date": "2026-11-21"},
        owner=dead_owner(),
        decide=lambda last: None,
    )
    env.metrics.initialise_from(env.repository)
    samples = scrape(env.metrics)
    assert value(samples, "batchd_job_executions_running", job="dated") == 1

    (recovered,) = env.operator.recover(lease=5)
    assert recovered.id == orphan.id
    env.metrics.on_execution_recovered(recovered)
    env.metrics.on_execution_recovered(recovered)  # told twice: counted once
    samples = scrape(env.metrics)
    assert value(samples, "batchd_job_executions_running", job="dated") == 0
    assert value(samples, "batchd_job_executions_total", job="dated", status="FAILED") == 1
    assert value(samples, "batchd_job_last_status", job="dated", status="FAILED") == 1
    assert value(samples, "batchd_job_duration_seconds_count", job="dated") in (None, 0)


# ------------------------------------------------------------------ schedules, watches


def test_schedule_fires_and_next_fire_times(env: Env) -> None:
    schedules = [
        ScheduleSettings(name="hourly", job="dated", interval="1h", params={"date": "{fire_date}"}),
        ScheduleSettings(
            name="held", job="dated", cron="0 3 * * *", params={"date": "{fire_date}"}, paused=True
        ),
    ]
    scheduler = Scheduler(
        schedules,
        env.operator,
        TriggerStore(env.repository),
        timezone="UTC",
        listener=env.metrics,
    )
    env.metrics.refresh_schedules(scheduler)
    samples = scrape(env.metrics)
    next_fire = value(samples, "batchd_schedule_next_fire_timestamp_seconds", schedule="hourly")
    assert next_fire is not None and time.time() < next_fire <= time.time() + 3600 + 5
    assert not series(samples, "batchd_schedule_next_fire_timestamp_seconds", schedule="held")
    assert value(samples, "batchd_schedule_fires_total", schedule="hourly", outcome="error") == 0

    assert scheduler.fire("hourly") == "started"
    assert scheduler.fire("hourly") in ("duplicate", "running", "complete")
    second = scheduler.fire("hourly")
    samples = scrape(env.metrics)
    fires = "batchd_schedule_fires_total"
    assert value(samples, fires, schedule="hourly", outcome="started") == 1
    assert sum(series(samples, fires, schedule="hourly").values()) == 3
    assert value(samples, fires, schedule="hourly", outcome=second) is not None

    # Resumed: the paused schedule gets its series at the next scrape, without a call.
    scheduler.resume("held")
    samples = scrape(env.metrics)
    held = value(samples, "batchd_schedule_next_fire_timestamp_seconds", schedule="held")
    assert held is not None and time.time() < held <= time.time() + 86400 + 5


def test_watch_outcomes(env: Env) -> None:
    inbox = env.tmp / "inbox"
    inbox.mkdir()
    settings = WatchSettings(
        name="payments",
        job="dated",
        directory=inbox,
        regex=r"pay_(?P<day>.+)\.csv",
        params={"date": "{day}"},
        stable_for="0.2s",
    )
    watcher = Watcher([settings], env.operator, TriggerStore(env.repository), listener=env.metrics)
    env.cleanups.append(watcher.stop)
    old = time.time() - 3600
    for name in ("pay_2026-11-21.csv", "pay_not-a-date.csv"):
        (inbox / name).write_text("x")
        os.utime(inbox / name, (old, old))
    outcomes = sorted(taken.outcome for taken in watcher.scan())
    assert outcomes == ["rejected", "started"]
    samples = scrape(env.metrics)
    files = "batchd_watch_files_total"
    assert value(samples, files, watch="payments", outcome="started") == 1
    assert value(samples, files, watch="payments", outcome="rejected") == 1


# ------------------------------------------------------------------------ control socket


def test_control_requests_with_bounded_labels(env: Env) -> None:
    env.metrics.on_control_request("ping", "ok")
    env.metrics.on_control_request("ping", "ok")
    env.metrics.on_control_request("start", "error")
    for junk in ("drop tables", "x" * 1000, None, 42, ["ping"]):
        env.metrics.on_control_request(junk, "error")
    env.metrics.on_control_request("invalid", "error")  # what the control server reports
    env.metrics.on_control_request("denied", "error")
    for n in range(50):
        env.metrics.on_control_request("jobs", f"weird_{n}")
    env.metrics.on_control_request("jobs", "Not A Label!")
    samples = scrape(env.metrics)
    requests = "batchd_control_requests_total"
    assert value(samples, requests, op="ping", outcome="ok") == 2
    assert value(samples, requests, op="start", outcome="error") == 1
    assert value(samples, requests, op="invalid", outcome="error") == 5 + 1
    assert value(samples, requests, op="denied", outcome="error") == 1
    ops = {dict(key)["op"] for key in series(samples, requests)}
    assert ops <= CONTROL_OPS | {"invalid", "denied"}
    outcomes = {dict(key)["outcome"] for key in series(samples, requests)}
    assert len(outcomes - {"other"}) <= MAX_CONTROL_OUTCOMES
    assert sum(series(samples, requests).values()) == 2 + 1 + 5 + 2 + 50 + 1


# ------------------------------------------------------------------------------ serving


def http_get(url: str, timeout: float = 5) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


def test_the_http_endpoint_serves_the_registry(env: Env) -> None:
    env.metrics.start("127.0.0.1:0")
    port = env.metrics.port
    assert port
    env.operator.start("numbers")
    env.metrics.on_control_request("ping", "ok")

    status, content_type, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    samples = parse(body)
    assert value(samples, "batchd_job_executions_total", job="numbers", status="COMPLETED") == 1
    assert value(samples, "batchd_step_items_total", job="numbers", step="count", kind="read") == 19
    assert value(samples, "batchd_control_requests_total", op="ping", outcome="ok") == 1
    with pytest.raises(RuntimeError):
        env.metrics.start("127.0.0.1:0")

    env.metrics.stop()
    with pytest.raises(urllib.error.URLError):
        http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_ipv6_listen_address() -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as error:
        pytest.skip(f"no IPv6 loopback on this machine: {error}")
    with Metrics() as metrics:
        metrics.start("[::1]:0")
        status, _, body = http_get(f"http://[::1]:{metrics.port}/metrics")
    assert status == 200 and "batchd_up 1.0" in body


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen("localhost:0") == ("localhost", 0)
    for bad in ("9464", "::1:9464", "host:", ":9464", "host:99999", "host:http"):
        with pytest.raises(ValueError, match="host:port"):
            parse_listen(bad)


def test_a_busy_port_is_an_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            Metrics().start(f"127.0.0.1:{port}")


# ------------------------------------------------------------------ the daemon, restarted


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_daemon_serves_metrics_and_keeps_job_gauges_across_a_restart(
    tmp_path: Path,
) -> None:
    port = free_port()
    schedule = (
        '[[schedules]]\nname = "new_year"\njob = "dated"\ncron = "0 0 1 1 *"\n'
        'params = { date = "{fire_date}" }\n'
    )
    text = config(tmp_path, watch(tmp_path) + schedule).replace(
        "listen = ''", f'listen = "127.0.0.1:{port}"'
    )
    url = f"http://127.0.0.1:{port}/metrics"
    daemons: list[DaemonProcess] = []
    try:
        first = DaemonProcess(tmp_path, text)
        daemons.append(first)
        first.notify.wait_for("READY=1")  # READY=1 comes after the metrics listener is up
        drop(tmp_path / "drop-numbers", "batch1.txt", range(1, 11))

        def completed() -> Samples | None:
            samples = parse(http_get(url)[2])
            done = value(
                samples, "batchd_job_executions_total", job="count_file", status="COMPLETED"
            )
            return samples if done == 1 else None

        samples = wait_until(completed)
        assert isinstance(samples, dict)
        assert value(samples, "batchd_watch_files_total", watch="numbers", outcome="started") == 1
        items = {"job": "count_file", "step": "count"}
        assert value(samples, "batchd_step_items_total", kind="read", **items) == 10
        assert value(samples, "batchd_step_items_total", kind="written", **items) == 10
        assert value(samples, "batchd_job_last_status", job="count_file", status="COMPLETED") == 1
        success = value(samples, "batchd_job_last_success_timestamp_seconds", job="count_file")
        assert success is not None and abs(success - time.time()) < 60
        next_fire = value(
            samples, "batchd_schedule_next_fire_timestamp_seconds", schedule="new_year"
        )
        assert next_fire is not None and next_fire > time.time()
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0

        second = DaemonProcess(tmp_path, text)
        daemons.append(second)
        second.notify.wait_for("READY=1")
        samples = parse(http_get(url)[2])
        assert value(samples, "batchd_job_last_status", job="count_file", status="COMPLETED") == 1
        assert value(
            samples, "batchd_job_last_success_timestamp_seconds", job="count_file"
        ) == pytest.approx(success)
        assert value(samples, "batchd_job_executions_running", job="count_file") == 0
        total = value(samples, "batchd_job_executions_total", job="count_file", status="COMPLETED")
        assert total in (None, 0)  # counters start again at 0
    finally:
        for daemon in daemons:
            daemon.stop()


# --------------------------------------------------------------- alert rules, dashboard

# batchd metric names and ``up``, not followed by "(" (a function).
METRIC_NAME = re.compile(r"\b(batchd_[a-z0-9_]+|up)\b(?!\s*\()")


def referenced_metrics(expression: str) -> set[str]:
    """batchd metric names (and ``up``) an expression uses; label names inside {...} and
    strings are not metric names."""
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_groupings = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1()", without_matchers
    )
    return set(METRIC_NAME.findall(without_groupings))


def alert_expressions_without_yaml(text: str) -> list[str]:
    """The ``expr:`` values of the rules file, read line by line (block scalars included)."""
    expressions: list[str] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"(\s*)expr:\s*(.*)$", line)
        if not match:
            continue
        indent, rest = len(match.group(1)), match.group(2).strip()
        if rest in ("|", ">", "|-", ">-"):
            block = []
            for following in lines[index + 1 :]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                block.append(following)
            expressions.append("\n".join(block))
        else:
            expressions.append(rest)
    return expressions


def test_alert_rules_reference_only_exported_metrics() -> None:
    text = ALERTS.read_text()
    expressions = alert_expressions_without_yaml(text)
    assert len(expressions) >= 5
    exported = exported_sample_names() | {"up"}
    used: set[str] = set()
    for expression in expressions:
        names = referenced_metrics(expression)
        assert names <= exported, f"{expression!r} uses {names - exported}"
        used |= names
    assert {
        "up",
        "batchd_job_last_status",
        "batchd_job_last_success_timestamp_seconds",
        "batchd_schedule_next_fire_timestamp_seconds",
    } <= used


def test_alert_rules_structure() -> None:
    yaml = pytest.importorskip(
        "yaml",
        reason="PyYAML is not installed: the rules file is only "
        "checked line by line (see the test above)",
    )
    document = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    records = [rule for rule in rules if "record" in rule]
    assert {
        "BatchdDown",
        "BatchdAbsent",
        "BatchdJobLastExecutionFailed",
        "BatchdJobSuccessTooOld",
        "BatchdScheduleStuck",
    } <= set(alerts)
    assert (
        'batchd_job_last_status{status="FAILED"} == 1'
        in alerts["BatchdJobLastExecutionFailed"]["expr"]
    )
    assert "26 * 3600" in alerts["BatchdJobSuccessTooOld"]["expr"]
    assert "tuning" in alerts["BatchdJobSuccessTooOld"]["labels"]
    assert 'up{job="batchd"} == 0' in alerts["BatchdDown"]["expr"]
    assert "absent(" in alerts["BatchdAbsent"]["expr"]
    assert "> 3600" in alerts["BatchdScheduleStuck"]["expr"]
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
    assert all(rule["record"].startswith("batchd:") for rule in records)
    exported = exported_sample_names() | {"up"} | {rule["record"] for rule in records}
    for rule in rules:
        assert referenced_metrics(rule["expr"]) <= exported


# promtool's checks and the alerts' unit tests: tests/test_prometheus.py.


def dashboard_expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, item in node.items():
            if key in ("expr", "definition") and isinstance(item, str):
                yield item
            else:
                yield from dashboard_expressions(item)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_expressions(item)


def test_grafana_dashboard_is_valid_and_uses_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= set(grid) and grid["x"] + grid["w"] <= 24
    titles = " | ".join(panel["title"].lower() for panel in panels)
    for wanted in (
        "executions",
        "running",
        "last status",
        "duration",
        "step items",
        "schedule fires",
        "watch files",
        "control requests",
    ):
        assert wanted in titles, wanted
    assert any(panel["type"] == "heatmap" for panel in panels)
    exported = exported_sample_names() | {"up"}
    used: set[str] = set()
    expressions = list(dashboard_expressions(dashboard))
    assert len(expressions) >= 10
    for expression in expressions:
        names = referenced_metrics(expression.replace("label_values(", "("))
        assert names <= exported, f"{expression!r} uses {names - exported}"
        used |= names
    wanted_metrics = {
        "batchd_job_executions_total",
        "batchd_job_executions_running",
        "batchd_job_last_status",
        "batchd_job_last_success_timestamp_seconds",
        "batchd_job_duration_seconds_bucket",
        "batchd_step_items_total",
        "batchd_schedule_fires_total",
        "batchd_schedule_next_fire_timestamp_seconds",
        "batchd_watch_files_total",
        "batchd_control_requests_total",
    }
    assert wanted_metrics <= used, wanted_metrics - used


def test_referenced_metrics_helper() -> None:
    expression = (
        'sum by (le, exported_job) (rate(batchd_job_duration_seconds_bucket{job="x", '
        'status="batchd_fake"}[5m])) > on (exported_job) group_left () batchd:thr or up == 0'
    )
    assert referenced_metrics(expression) == {"batchd_job_duration_seconds_bucket", "up"}
    assert referenced_metrics("batchd_nope_total > 1") == {"batchd_nope_total"}


# ------------------------------------------------------------- the repository's summary


def test_job_summaries(repository: SqlJobRepository) -> None:
    """The read the job gauges start from, on SQLite and on PostgreSQL."""
    controls = Controls()
    with JobOperator(repository, make_registry(controls), heartbeat=0.2) as operator:
        assert repository.job_summaries() == []
        first = operator.start("flaky")
        controls.fail = False
        second = operator.restart(first.id)
        operator.start("numbers")
        blocked = operator.start_async("blocking")
        assert controls.gate_reached.wait(10)
        summaries = {summary.job_name: summary for summary in repository.job_summaries()}
        controls.gate.set()
        operator.wait(blocked.id, timeout=10)
    assert set(summaries) == {"flaky", "numbers", "blocking"}
    flaky = summaries["flaky"]
    assert flaky.last_status == BatchStatus.COMPLETED
    assert flaky.last_execution_id == second.id
    assert flaky.last_end_time == second.end_time
    assert flaky.last_success_time == second.end_time
    assert flaky.statuses == {BatchStatus.FAILED, BatchStatus.COMPLETED}
    assert flaky.running_ids == ()
    blocking = summaries["blocking"]
    assert blocking.running_ids == (blocked.id,)
    assert blocking.last_status is None and blocking.last_success_time is None
    assert blocking.statuses == frozenset()
    # Abandoned: the last status changes, the end time stays that of the failure.
    abandoned = repository.abandon(first.id)
    assert abandoned.status == BatchStatus.ABANDONED
    summaries = {summary.job_name: summary for summary in repository.job_summaries()}
    assert summaries["flaky"].last_status == BatchStatus.COMPLETED  # it ended later
    assert BatchStatus.ABANDONED in summaries["flaky"].statuses
