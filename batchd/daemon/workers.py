"""``isolation = "process"``: every execution the daemon runs runs in a worker process.

:class:`ProcessOperator` is the engine's :class:`~batchd.engine.JobOperator` with one change:
where the thread operator runs an execution in one of its pool threads, this one creates the
execution owned by a spare worker process (:mod:`batchd.daemon.workers_pool`), hands it over,
and the pool thread only waits for the execution's end (the worker may then take another).
Everything that starts executions (start, restart, fires, file drops, backfills, retries)
goes through it unchanged.

When a worker says its execution is done, or ends, the execution should have ended too; if
it is still running in the repository, the worker died before recording its end
(``os._exit``, a segfault, a kill, its memory limit), and it is marked FAILED at once with
the cause — by the same compare-and-set as crash recovery
(:meth:`SqlJobRepository.mark_failed`). ``[limits]`` ``timeout`` is watched here too: when
it runs out the execution is marked FAILED ("timed out after ...") and asked to stop; a
worker that has not ended ``stop_grace`` later is killed.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from batchd.daemon.durations import format_duration
from batchd.daemon.settings import JobLimits, Settings
from batchd.daemon.workers_cgroup import oom_killed
from batchd.daemon.workers_cgroup import remove as remove_cgroup
from batchd.daemon.workers_pool import Worker, WorkerPool
from batchd.daemon.workers_zygote import EXIT_MEMORY, Assignment
from batchd.engine import JobOperator, JobRegistry
from batchd.engine.heartbeat import Heartbeat
from batchd.engine.job import Job
from batchd.engine.job_runner import ExecutionHandle
from batchd.engine.step_run import describe_error
from batchd.items.paths import input_directories
from batchd.model import JobExecution, JobParameters
from batchd.repository import Owner, SqlJobRepository

log = logging.getLogger(__name__)

# How long the end of an execution waits for the rest of its worker's output.
OUTPUT_DRAIN_SECONDS = 5.0


def format_memory(size: int) -> str:
    """Bytes as ``memory_max`` is written: 200M, 4G."""
    for unit, factor in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def log_path(log_dir: Path, job: str, execution_id: int) -> Path:
    """``<log_dir>/<job>/<execution id>.log`` (a job name is a file name here)."""
    return log_dir / job.replace(os.sep, "_") / f"{execution_id}.log"


def exit_cause(worker: Worker, limits: JobLimits, *, oom_killed: bool = False) -> str:
    """Why a worker ended without recording its execution's end, as exit_message says it
    (``oom_killed``: its cgroup says the kernel killed it for its memory limit)."""
    if worker.kill_reason is not None:
        return f"worker process {worker.pid} killed: {worker.kill_reason}"
    if oom_killed and limits.memory_max is not None:
        return f"memory limit {format_memory(limits.memory_max)} exceeded"
    if worker.status is None:
        return f"worker process {worker.pid} ended with its warm process"
    code = os.waitstatus_to_exitcode(worker.status)
    if code == EXIT_MEMORY and limits.memory_max is not None:
        return f"memory limit {format_memory(limits.memory_max)} exceeded"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"worker process {worker.pid} killed by signal {-code} ({name})"
    if code == 0:
        return f"worker process {worker.pid} exited without recording the end"
    return f"worker process {worker.pid} exited with status {code}"


class ProcessOperator(JobOperator):
    """A :class:`JobOperator` whose executions run in worker processes."""

    def __init__(
        self,
        repository: SqlJobRepository,
        registry: JobRegistry,
        pool: WorkerPool,
        settings: Callable[[], Settings],
        *,
        max_concurrent_jobs: int,
        heartbeat: float,
        host: str,
    ) -> None:
        super().__init__(repository, registry, max_concurrent_jobs, heartbeat=heartbeat, host=host)
        self.pool = pool
        # Workers beat for their executions themselves (and hear of stops that way); the
        # daemon beats too for every worker it sees alive, as it does for its threads: an
        # execution's lease then holds while its node does (a crowded machine may delay a
        # worker's own beat past the lease), and a worker's death is seen at once anyway.
        self._heartbeat = Heartbeat(repository, self._live_workers, heartbeat)
        self.settings = settings  # read at each start: a reload changes limits
        self._workers: dict[int, Worker] = {}
        # Executions queued for or held by a pool thread (started with start_async), and
        # those handed to their worker: the settings and limits it was given, its cgroup.
        self._pooled: set[int] = set()
        self._dispatched: dict[int, tuple[Settings, JobLimits, Path | None]] = {}

    def _live_workers(self) -> list[ExecutionHandle]:
        """Handles for the heartbeat, one per execution whose worker is alive; marked done,
        so that an end recorded by the worker is not taken for one made elsewhere (stops
        reach the worker through its own beat and :meth:`stop`)."""
        with self._lock:
            ids = [i for i, worker in self._workers.items() if not worker.exited.is_set()]
        handles = [ExecutionHandle(execution_id) for execution_id in ids]
        for handle in handles:
            handle.done.set()
        return handles

    # ------------------------------------------------------------ creating, running

    def _claim_owner(self) -> tuple[Owner, Callable[[JobExecution | None], None]]:
        # The worker is chosen first: the execution is created owned by its pid.
        worker = self.pool.take()

        def settle(execution: JobExecution | None) -> None:
            if execution is None:
                self.pool.give_back(worker)
                return
            with self._lock:
                self._workers[execution.id] = worker

        return Owner(host=self.owner.host, pid=worker.pid), settle

    def _fail_unstarted(self, job: Job, execution: JobExecution, reason: str) -> None:
        with self._lock:
            worker = self._workers.pop(execution.id, None)
            self._pooled.discard(execution.id)
            dispatched = self._dispatched.pop(execution.id, None)
        if worker is not None:
            if dispatched is not None:  # its pool thread never came: it runs unsupervised
                worker.kill(f"not started: {reason}")
                if dispatched[2] is not None:
                    remove_cgroup(dispatched[2])
            self.pool.give_back(worker)
        super()._fail_unstarted(job, execution, reason)

    def _before_pool(self, job: Job, execution: JobExecution) -> None:
        """Hand the execution to its worker in the starting thread when a pool thread is
        free to supervise it: the worker starts at once instead of after a pool thread is
        scheduled. When every pool thread is taken (``max_concurrent_jobs`` running), it
        waits for one, and is handed over there."""
        with self._lock:
            free = len(self._pooled) < self.max_concurrent_jobs
            self._pooled.add(execution.id)
            worker = self._workers[execution.id]
        if not free:
            return
        try:
            self._dispatch(job, execution, worker)
        except Exception:
            # Not handed over: its pool thread tries again and ends it FAILED as it fails.
            with self._lock:
                dispatched = self._dispatched.pop(execution.id, None)
            if dispatched is not None and dispatched[2] is not None:
                remove_cgroup(dispatched[2])

    def _dispatch(self, job: Job, execution: JobExecution, worker: Worker) -> None:
        """Send the execution to its worker, under the limits of the settings of now."""
        settings = self.settings()
        limits = settings.limits.of(job.name)
        cgroup = None
        if limits.memory_max is not None:
            cgroup = self.pool.memory.place(worker.pid, limits.memory_max)
        with self._lock:
            self._dispatched[execution.id] = (settings, limits, cgroup)
        # The parameters go as the execution records them: the worker types them with
        # its own job (a reload re-imports the modules, so the daemon's classes may no
        # longer be the ones a worker has). No rlimit where the cgroup limits it.
        rlimit = None if cgroup is not None else limits.memory_max
        payload = pickle.dumps(
            Assignment(
                execution,
                rlimit,
                self.heartbeat_interval,
                input_directories(),
                # A memory limit stays with the worker (an rlimit cannot be raised, a
                # cgroup is removed after it): its last execution.
                last=limits.memory_max is not None,
            )
        )
        worker.assign(execution.id, log_path(settings.log_dir, job.name, execution.id), payload)
        log.info(
            "job execution %d (%s) runs in worker process %d", execution.id, job.name, worker.pid
        )

    def _run(self, job: Job, execution: JobExecution, job_params: JobParameters) -> None:
        """In a pool thread: hand the execution to its worker (unless the starting thread
        did), wait for the worker's end, and fail the execution with the cause if the
        worker did not record its end."""
        handle = self._handles[execution.id]
        with self._lock:
            worker = self._workers[execution.id]
            dispatched = self._dispatched.get(execution.id)
        try:
            if dispatched is None:
                self._dispatch(job, execution, worker)
                with self._lock:
                    dispatched = self._dispatched[execution.id]
            settings, limits, cgroup = dispatched
            cause = self._supervise(worker, execution, limits, settings.stop_grace)
            oom = cgroup is not None and oom_killed(cgroup)
            self._fail_if_running(execution.id, cause or exit_cause(worker, limits, oom_killed=oom))
            if worker.idle:
                self.pool.drain(worker)  # its output ends here; the worker lives on
            worker.output_closed.wait(OUTPUT_DRAIN_SECONDS)
        except BaseException as error:
            log.exception(
                "job execution %d (%s): supervising its worker failed", execution.id, job.name
            )
            # A worker never handed its execution would wait for it for ever.
            worker.kill("the daemon failed to hand it its execution")
            self._fail_if_running(execution.id, f"not started: {describe_error(error)}")
            raise
        finally:
            with self._lock:
                self._handles.pop(execution.id, None)
                self._workers.pop(execution.id, None)
                self._pooled.discard(execution.id)
                dispatched = self._dispatched.pop(execution.id, None)
            if dispatched is not None and dispatched[2] is not None:
                remove_cgroup(dispatched[2])
            self.pool.give_back(worker)  # a spare again if it is idle, else it goes
            handle.done.set()
            final = self.repository.get_execution(execution.id) or execution
            self._notify("on_execution_ended", final)

    def _supervise(
        self, worker: Worker, execution: JobExecution, limits: JobLimits, grace: timedelta
    ) -> str | None:
        """Wait for the worker's end; past the timeout, fail, stop, then kill it. The
        timeout's cause, or None."""
        timeout = limits.timeout
        if worker.wait_end(None if timeout is None else timeout.total_seconds()):
            return None
        cause = f"timed out after {format_duration(timeout)}" if timeout else "timed out"
        log.warning(
            "job execution %d (%s) %s: stopping it", execution.id, execution.job_name, cause
        )
        self._fail_if_running(execution.id, cause)
        worker.stop()
        if not worker.wait_end(grace.total_seconds()):
            worker.kill(f"{cause}, and still running stop_grace {format_duration(grace)} later")
            worker.exited.wait()
        return cause

    def _fail_if_running(self, execution_id: int, cause: str) -> None:
        """Crash recovery's compare-and-set on one execution: FAILED with ``cause`` if it
        is still running (read again when a write of its worker came in between)."""
        for _ in range(5):
            current = self.repository.get_execution(execution_id)
            if current is None or not current.status.is_running:
                return
            if self.repository.mark_failed(current, cause):
                log.warning(
                    "job execution %d (%s) FAILED: %s", execution_id, current.job_name, cause
                )
                return

    # ------------------------------------------------------------ stopping

    def stop(self, job_or_id: str | int) -> list[JobExecution]:
        """As the engine's; the worker hears of the stop at once (not at its heartbeat)."""
        asked = super().stop(job_or_id)
        for execution in asked:
            with self._lock:
                worker = self._workers.get(execution.id)
            if worker is not None:
                worker.stop()
        return asked

    def kill_workers(self, reason: str) -> None:
        """SIGKILL every worker still running; their executions end FAILED with ``reason``."""
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.kill(reason)

    def log_is_open(self, execution_id: int) -> bool:
        """Whether output of this execution's worker may still come."""
        with self._lock:
            worker = self._workers.get(execution_id)
        return worker is not None and not worker.output_closed.is_set()


# The most one `log` answer carries (a client asks again from the offset it was given).
LOG_CHUNK = 1 << 20


def read_log(
    log_dir: Path, execution: JobExecution, offset: int, *, still_writing: bool
) -> dict[str, Any]:
    """The control op ``log``: ``{"text", "offset", "ended"}`` from byte ``offset``; ended
    once the execution has ended and its worker's output is all in the file. An execution
    that ran in a thread has no log of its own (empty text)."""
    path = log_path(log_dir, execution.job_name, execution.id)
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read(LOG_CHUNK)
            at_end = not file.read(1)
    except FileNotFoundError:
        data, at_end = b"", True
    if not at_end and b"\n" in data:
        data = data[: data.rindex(b"\n") + 1]  # never half a character
    ended = at_end and not still_writing and not execution.status.is_running
    return {
        "text": data.decode(errors="replace"),
        "offset": offset + len(data),
        "ended": ended,
    }


def purge_logs(log_dir: Path, repository: SqlJobRepository) -> int:
    """Delete the logs whose execution the repository no longer has (``purge``); how many."""
    deleted = 0
    for path in log_dir.glob("*/*.log"):
        if path.stem.isdigit() and repository.get_execution(int(path.stem)) is None:
            path.unlink(missing_ok=True)
            deleted += 1
    return deleted
