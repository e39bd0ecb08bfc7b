"""Prometheus metrics of the daemon (DESIGN §4), served by prometheus-client on ``metrics.listen``.

:class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry` (never the global
one) and is fed by hooks:

- the :class:`~batchd.engine.JobOperator` observer hooks ``on_execution_created`` and
  ``on_execution_ended`` (``operator.add_observer(metrics)``); ``on_execution_recovered`` for
  what crash recovery marked FAILED;
- the scheduler's ``on_schedule_fire(name, outcome)``, the watcher's
  ``on_watch_file(watch, outcome)`` and the control socket's ``on_control_request(op, outcome)``
  (each takes ``listener=metrics``).

Counters start at 0 with every daemon process, as Prometheus expects. The job gauges (last
status, last success, running executions) do not: :meth:`Metrics.initialise_from` reads them
from the repository at start-up, so a restart does not reset what Prometheus sees; called again
(after each recovery pass) it also picks up what other processes did: executions recovered,
abandoned, or run by another daemon sharing the database.

What happens at scrape time: the next fire time of each schedule is read from the scheduler
bound by :meth:`Metrics.refresh_schedules` (a paused schedule has no series), and the item
counters of the steps this process is running are brought up to date from the repository
(at most once a second), so ``rate(batchd_step_items_total[5m])`` follows a long job as it
runs instead of jumping when it ends.

"The last status" of a job is that of its execution that *ended* last (by end time), so that
an execution starting does not hide the failure of the one before; an abandon turns a FAILED
last status into ABANDONED.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from batchd import __version__
from batchd.daemon.metrics_http import MetricsListener, parse_listen
from batchd.daemon.protocol import DENIED_OP, INVALID_OP, OPERATIONS
from batchd.model import BatchStatus, JobExecution, StepExecution
from batchd.repository import SqlJobRepository

log = logging.getLogger(__name__)

#: Every batchd metric family as the text exposition names it (counters' samples add
#: ``_total``, the histogram's ``_bucket``, ``_sum`` and ``_count``).
METRIC_NAMES = (
    "batchd_up",
    "batchd_build_info",
    "batchd_job_executions",
    "batchd_job_executions_running",
    "batchd_job_last_success_timestamp_seconds",
    "batchd_job_last_status",
    "batchd_job_duration_seconds",
    "batchd_job_retries",
    "batchd_step_items",
    "batchd_schedule_next_fire_timestamp_seconds",
    "batchd_schedule_fires",
    "batchd_schedule_deadline_missed",
    "batchd_schedule_late",
    "batchd_watch_files",
    "batchd_control_requests",
    "batchd_node_info",
    "batchd_database_up",
    "batchd_clock_skew_seconds",
    "batchd_nodes_live",
)

#: ``kind`` label of ``batchd_step_items_total`` -> the step counters it adds up.
STEP_ITEM_KINDS: dict[str, tuple[str, ...]] = {
    "read": ("read_count",),
    "written": ("write_count",),
    "filtered": ("filter_count",),
    "skipped": ("read_skip_count", "process_skip_count", "write_skip_count"),
}

#: Buckets of ``batchd_job_duration_seconds``: batch jobs take seconds to hours.
DURATION_BUCKETS = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    10800.0,
    14400.0,
    21600.0,
)

#: Operations of the control socket (DESIGN §4), from its one table. The ``op`` label is
#: one of them, "denied" (a refused peer) or "invalid" (anything else: unreadable requests,
#: unknown operations), so that random requests cannot create series without end.
CONTROL_OPS = frozenset(OPERATIONS)
#: At most this many distinct control ``outcome`` values; later ones are counted as "other".
MAX_CONTROL_OUTCOMES = 8
_CONTROL_OP_LABELS = CONTROL_OPS | {INVALID_OP, DENIED_OP}
_OUTCOME_VALUE = re.compile(r"[a-z][a-z0-9_]{0,31}")

# Final statuses whose execution counters exist (at 0) as soon as a job is known, so that
# increase(batchd_job_executions_total{status="FAILED"}[...]) sees the first failure.
_PRESET_STATUSES = (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.STOPPED)
# Ended executions remembered, so that a repository read made before they ended cannot
# count them as running again, and so that an end is counted once.
_RECENTLY_ENDED = 10_000
# Step progress is read from the repository at most this often (scrapes in between reuse it).
_PROGRESS_EVERY = 1.0


class ScheduleSource(Protocol):
    """What :meth:`Metrics.refresh_schedules` needs of a scheduler."""

    def next_fire_times(self) -> dict[str, datetime | None]: ...


class _ScheduleCollector:
    """``batchd_schedule_next_fire_timestamp_seconds``, read from the scheduler when scraped."""

    NAME = "batchd_schedule_next_fire_timestamp_seconds"
    HELP = "When each schedule fires next (Unix time); no series while a schedule is paused."

    def __init__(self) -> None:
        self.source: ScheduleSource | None = None
        self.last: dict[str, datetime | None] = {}
        self._lock = threading.Lock()

    def refresh(self, source: ScheduleSource | None = None) -> None:
        with self._lock:
            if source is not None:
                self.source = source
            current = self.source
        if current is None:
            return
        try:
            times = current.next_fire_times()
        except Exception:
            log.warning("metrics: cannot read the schedules' next fire times", exc_info=True)
            return
        with self._lock:
            self.last = dict(times)

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["schedule"])]

    def collect(self) -> Iterable[Metric]:
        self.refresh()
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["schedule"])
        with self._lock:
            times = dict(self.last)
        for name, when in sorted(times.items()):
            if when is not None:
                family.add_metric([name], when.timestamp())
        return [family]


class _ProgressCollector:
    """Exposes nothing itself: when scraped, brings the item counters of the steps this
    process runs up to date (registered first, so it runs before the counters are read)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        self.metrics.update_progress()
        return []


class Metrics:
    """The daemon's metrics in their own registry (``.registry``); see the module docs.

    ``repository`` (or the one given to :meth:`initialise_from`) is where ended executions
    are read again for their final status, end time and step counters.
    """

    def __init__(self, repository: SqlJobRepository | None = None) -> None:
        self.repository = repository
        self.registry = CollectorRegistry()
        self.http = MetricsListener(self.registry)
        self._lock = threading.RLock()
        # job -> ids of its executions running now (this process's and, from the repository,
        # any other's); id -> job of those this process runs (their items are counted).
        self._running: dict[str, set[int]] = {}
        self._local: dict[int, str] = {}
        self._ended: OrderedDict[int, None] = OrderedDict()
        # step execution id -> kind -> items already counted.
        self._counted: dict[int, dict[str, int]] = {}
        # job -> (end time, execution id, status) of the execution that ended last.
        self._last: dict[str, tuple[datetime, int, BatchStatus]] = {}
        self._statuses: dict[str, set[BatchStatus]] = {}
        self._last_success: dict[str, float] = {}
        self._control_outcomes: set[str] = set()
        self._progress_read_at = float("-inf")

        registry = self.registry
        # First: updates the step item counters before they are collected.
        registry.register(_ProgressCollector(self))
        self.up = Gauge("batchd_up", "1 while the batchd daemon runs.", registry=registry)
        self.up.set(1)
        self.build = Info("batchd_build", "Version of batchd.", registry=registry)
        self.build.info({"version": __version__})
        self.executions = Counter(
            "batchd_job_executions",
            "Job executions ended, by final status.",
            ["job", "status"],
            registry=registry,
        )
        self.retries = Counter(
            "batchd_job_retries",
            "FAILED executions restarted automatically ([job.<name>] retries).",
            ["job"],
            registry=registry,
        )
        self.running = Gauge(
            "batchd_job_executions_running",
            "Job executions running now (STARTING, STARTED or STOPPING).",
            ["job"],
            registry=registry,
        )
        self.last_success = Gauge(
            "batchd_job_last_success_timestamp_seconds",
            "When the job's newest COMPLETED execution ended (Unix time).",
            ["job"],
            registry=registry,
        )
        self.last_status = Gauge(
            "batchd_job_last_status",
            "1 for the status of the job's execution that ended last, 0 for the other "
            "statuses it has had.",
            ["job", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "batchd_job_duration_seconds",
            "Run time of ended job executions (whatever their status), start to end.",
            ["job"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.step_items = Counter(
            "batchd_step_items",
            "Items of chunk steps by kind: read, written, filtered, skipped (committed work).",
            ["job", "step", "kind"],
            registry=registry,
        )
        self._schedules = _ScheduleCollector()
        registry.register(self._schedules)
        self.schedule_fires = Counter(
            "batchd_schedule_fires",
            "Schedule fires by outcome.",
            ["schedule", "outcome"],
            registry=registry,
        )
        self.deadline_missed = Counter(
            "batchd_schedule_deadline_missed",
            "Fires not COMPLETED by their nominal time plus the schedule's deadline (each "
            "counted once, by the node that saw it first).",
            ["schedule"],
            registry=registry,
        )
        self.late = Gauge(
            "batchd_schedule_late",
            "1 while a fire of the schedule has missed its deadline and not completed, else 0.",
            ["schedule"],
            registry=registry,
        )
        self.watch_files = Counter(
            "batchd_watch_files",
            "Files taken by watches, by outcome.",
            ["watch", "outcome"],
            registry=registry,
        )
        self.control_requests = Counter(
            "batchd_control_requests",
            "Control socket requests by operation and outcome.",
            ["op", "outcome"],
            registry=registry,
        )
        self.node = Info("batchd_node", "This daemon's node name and host.", registry=registry)
        self.database_up = Gauge(
            "batchd_database_up",
            "1 while the job repository answers this node, 0 while it does not.",
            registry=registry,
        )
        self.clock_skew = Gauge(
            "batchd_clock_skew_seconds",
            "How far this node's clock is ahead of the database's (negative: behind).",
            registry=registry,
        )
        self.nodes_live = Gauge(
            "batchd_nodes_live",
            "Nodes with a heartbeat within the lease, this one included.",
            registry=registry,
        )
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)

    # ------------------------------------------------------------------ start-up

    def initialise_from(self, repository: SqlJobRepository, job_names: Iterable[str] = ()) -> None:
        """Set the job gauges from the repository: last status, last success, running
        executions of every job that has executions (and ``job_names``, e.g. the registered
        jobs, get their series at 0). Call it at start-up, before the triggers start; it is
        idempotent and cheap (grouped queries), so calling it again after each recovery
        pass keeps the gauges true to what other processes and recovery did."""
        self.repository = repository
        with self._lock:
            known_before = set(self._local)
        summaries = repository.job_summaries()
        with self._lock:
            # Running: what the repository says, less what ended since it was read, plus
            # what this process created since (the repository had it if it existed before).
            created_since = {i: j for i, j in self._local.items() if i not in known_before}
            for name in job_names:
                self._know_job(name)
            for summary in summaries:
                job = summary.job_name
                self._know_job(job)
                others = {i for i in summary.running_ids if i not in self._ended}
                mine = {i for i, owner_job in created_since.items() if owner_job == job}
                self._running[job] = others | mine
                self._set_running(job)
                self._statuses.setdefault(job, set()).update(summary.statuses)
                self._emit_last_status(job)
                if (
                    summary.last_status is not None
                    and summary.last_end_time is not None
                    and summary.last_execution_id is not None
                ):
                    self._set_last_status(
                        job, summary.last_end_time, summary.last_execution_id, summary.last_status
                    )
                if summary.last_success_time is not None:
                    self._set_last_success(job, summary.last_success_time.timestamp())
            for job in self._running.keys() - {s.job_name for s in summaries}:
                self._running[job] = {i for i, j in created_since.items() if j == job}
                self._set_running(job)

    def _know_job(self, job: str) -> None:
        """A job's series that exist before anything happens to it."""
        for status in _PRESET_STATUSES:
            self.executions.labels(job, status.value)
        if job not in self._running:
            self._running[job] = set()
            self._set_running(job)

    # ------------------------------------------------------------ operator observer

    def on_execution_created(self, execution: JobExecution) -> None:
        with self._lock:
            job = execution.job_name
            self._know_job(job)
            self._local[execution.id] = job
            self._running[job].add(execution.id)
            self._set_running(job)

    def on_retry(self, failed: JobExecution, retry: JobExecution) -> None:
        self.retries.labels(failed.job_name).inc()

    def on_execution_ended(self, execution: JobExecution) -> None:
        """Count the execution's end with its final status from the repository (the
        operator hands over its in-memory object), its duration and its steps' items."""
        self._ended_execution(self._final(execution), count_work=True)

    def on_execution_recovered(self, execution: JobExecution) -> None:
        """An execution crash recovery marked FAILED (``operator.recover()`` returns them):
        counted as ended, without duration or items (its end time is the recovery's)."""
        self._ended_execution(self._final(execution), count_work=False)

    def _final(self, execution: JobExecution) -> JobExecution:
        """The execution as the repository has it now (when the repository cannot be
        read, the engine's copy). An end that was not recorded counts as UNKNOWN (crash
        recovery marks the execution FAILED later)."""
        if self.repository is None:
            final = execution
        else:
            try:
                final = self.repository.get_execution(execution.id) or execution
            except Exception:
                log.warning(
                    "metrics: cannot read job execution %d; using what the engine knows",
                    execution.id,
                    exc_info=True,
                )
                final = execution
        if final.status.is_running:
            final = replace(final, status=BatchStatus.UNKNOWN)
        return final

    def _ended_execution(self, final: JobExecution, *, count_work: bool) -> None:
        job, status = final.job_name, final.status
        with self._lock:
            if final.id in self._ended:
                return  # counted already
            self._ended[final.id] = None
            while len(self._ended) > _RECENTLY_ENDED:
                self._ended.popitem(last=False)
            self._know_job(job)
            self.executions.labels(job, status.value).inc()
            if count_work:
                if final.start_time is not None and final.end_time is not None:
                    seconds = (final.end_time - final.start_time).total_seconds()
                    self.duration.labels(job).observe(max(0.0, seconds))
                self._count_items(job, final.step_executions)
            for step in final.step_executions:
                self._counted.pop(step.id, None)
            self._local.pop(final.id, None)
            self._running[job].discard(final.id)
            self._set_running(job)
            self._statuses.setdefault(job, set()).add(status)
            end = final.end_time or final.last_updated
            if end is not None:
                self._set_last_status(job, end, final.id, status)
            if status == BatchStatus.COMPLETED and end is not None:
                self._set_last_success(job, end.timestamp())

    # ------------------------------------------------------------- step progress

    def update_progress(self) -> None:
        """Count the items the running steps of this process have committed since the
        last time (scrapes call this; at most one repository read a second)."""
        repository = self.repository
        with self._lock:
            now = time.monotonic()
            if repository is None or now - self._progress_read_at < _PROGRESS_EVERY:
                return
            self._progress_read_at = now
            ids = list(self._local)
        for execution_id in ids:
            try:
                execution = repository.get_execution(execution_id)
            except Exception:
                log.warning(
                    "metrics: cannot read the progress of job execution %d",
                    execution_id,
                    exc_info=True,
                )
                return
            if execution is None:
                continue
            with self._lock:
                if execution_id in self._local:  # not ended meanwhile (its end counts it)
                    self._count_items(execution.job_name, execution.step_executions)

    def _count_items(self, job: str, steps: Iterable[StepExecution]) -> None:
        """Add what each step committed beyond what was counted before. The repository's
        counters only grow, so a stale read adds nothing. A partitioned step's items are
        counted as its partitions commit them, under the step's own name (its execution
        only sums them at the end)."""
        for step in steps:
            if step.is_partitioned:
                continue
            counted = self._counted.setdefault(step.id, {})
            for kind, fields in STEP_ITEM_KINDS.items():
                value = sum(getattr(step, field) for field in fields)
                delta = value - counted.get(kind, 0)
                if delta > 0:
                    self.step_items.labels(job, step.base_step_name, kind).inc(delta)
                    counted[kind] = value
                elif kind not in counted:
                    self.step_items.labels(job, step.base_step_name, kind)  # the series, at 0
                    counted[kind] = value

    # ------------------------------------------------------------------ gauges

    def _set_running(self, job: str) -> None:
        self.running.labels(job).set(len(self._running[job]))

    def _set_last_status(
        self, job: str, end: datetime, execution_id: int, status: BatchStatus
    ) -> None:
        current = self._last.get(job)
        if current is not None and (end, execution_id) < current[:2]:
            return  # an older end arriving late
        self._last[job] = (end, execution_id, status)
        self._statuses.setdefault(job, set()).add(status)
        self._emit_last_status(job)

    def _emit_last_status(self, job: str) -> None:
        if job not in self._last:
            return
        status = self._last[job][2]
        for seen in self._statuses.get(job, ()):
            self.last_status.labels(job, seen.value).set(1 if seen == status else 0)

    def _set_last_success(self, job: str, timestamp: float) -> None:
        if timestamp > self._last_success.get(job, float("-inf")):
            self._last_success[job] = timestamp
            self.last_success.labels(job).set(timestamp)

    # ------------------------------------------------------------ other listeners

    def refresh_schedules(self, scheduler: ScheduleSource) -> None:
        """Bind the scheduler whose next fire times are exported (read again at every
        scrape: after start, reload, pause and each fire they are current without more
        calls; calling it again is harmless)."""
        self._schedules.refresh(scheduler)
        with self._lock:
            for name in self._schedules.last:
                for outcome in ("started", "error"):
                    self.schedule_fires.labels(name, outcome)

    def on_schedule_fire(self, name: str, outcome: str) -> None:
        self.schedule_fires.labels(str(name), str(outcome)).inc()

    def on_deadline_missed(self, name: str) -> None:
        self.deadline_missed.labels(str(name)).inc()

    def on_schedule_late(self, name: str, late: bool) -> None:
        self.deadline_missed.labels(str(name))  # 0 until a deadline is missed
        self.late.labels(str(name)).set(1 if late else 0)

    def on_watch_file(self, watch: str, outcome: str) -> None:
        self.watch_files.labels(str(watch), str(outcome)).inc()

    def on_control_request(self, op: object, outcome: object) -> None:
        """``op`` may come straight from a client: anything but an operation of
        :data:`CONTROL_OPS` or "denied" is counted as "invalid", and at most
        :data:`MAX_CONTROL_OUTCOMES` outcomes ("ok", "error") are told apart."""
        op_label = op if isinstance(op, str) and op in _CONTROL_OP_LABELS else INVALID_OP
        outcome_label = "other"
        if isinstance(outcome, str) and _OUTCOME_VALUE.fullmatch(outcome):
            with self._lock:
                if (
                    outcome in self._control_outcomes
                    or len(self._control_outcomes) < MAX_CONTROL_OUTCOMES
                ):
                    self._control_outcomes.add(outcome)
                    outcome_label = outcome
        self.control_requests.labels(op_label, outcome_label).inc()

    # ------------------------------------------------------------------ serving

    def start(self, listen: str) -> None:
        """Serve ``/metrics`` on ``listen`` (see :meth:`MetricsListener.start`)."""
        self.http.start(listen)

    @property
    def port(self) -> int | None:
        return self.http.port

    def stop(self) -> None:
        """Stop serving (the registry keeps its values)."""
        self.http.stop()

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- inspecting

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every sample of the registry as (name, labels, value): for tests and debugging."""
        for family in self.registry.collect():
            for sample in family.samples:
                yield sample.name, dict(sample.labels), sample.value


__all__ = [
    "CONTROL_OPS",
    "DURATION_BUCKETS",
    "METRIC_NAMES",
    "STEP_ITEM_KINDS",
    "Metrics",
    "ScheduleSource",
    "parse_listen",
]
