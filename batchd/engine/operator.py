"""JobOperator: start, stop, restart, abandon and inspect job executions."""

from __future__ import annotations

import copy
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from batchd import failpoints
from batchd.engine.heartbeat import Heartbeat
from batchd.engine.job import Job
from batchd.engine.job_runner import ExecutionHandle, JobRunner
from batchd.engine.launch import JobOrExecution, Launch, LaunchPlanner, parse_identifier
from batchd.engine.listeners import notify
from batchd.engine.registry import JobRegistry
from batchd.engine.step_run import describe_error
from batchd.errors import JobExecutionAlreadyRunning, JobInstanceAlreadyComplete
from batchd.model import BatchStatus, JobExecution, JobParameters, RawParams
from batchd.repository import Owner, SqlJobRepository

log = logging.getLogger(__name__)

# How often start_next tries the next run id when another start took the one it chose.
_NEXT_ATTEMPTS = 5

# How often wait() looks at the repository for an execution another process runs.
_POLL_SECONDS = 0.05

AFTER_CREATE_EXECUTION = failpoints.declare(
    "operator.after_create_execution",
    "the execution is STARTING and nothing runs it; in-process errors there end it FAILED at "
    "once, a killed process leaves it to recover() (its owner pid is gone)",
)


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, it is just not ours
    # A zombie has ended: only its exit status waits to be collected. A worker whose parent
    # died with it stays one until init reaps it (slowly in some VMs, never in a container
    # without an init), and its execution must be recovered meanwhile.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no procfs: the signal's answer stands
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class JobOperator:
    """Runs the jobs of ``registry``, recording everything in ``repository``.

    ``start``/``restart`` block until the execution ends; their ``_async`` forms return the
    new execution (STARTING) at once and run it on a pool of ``max_concurrent_jobs``
    threads. Every running execution records a heartbeat every ``heartbeat`` seconds.
    """

    def __init__(
        self,
        repository: SqlJobRepository,
        registry: JobRegistry | None = None,
        max_concurrent_jobs: int = 4,
        *,
        heartbeat: float = 5.0,
        host: str | None = None,
    ) -> None:
        if max_concurrent_jobs < 1:
            raise ValueError(f"max_concurrent_jobs must be at least 1, not {max_concurrent_jobs}")
        self.repository = repository
        self.registry = registry if registry is not None else JobRegistry()
        self.max_concurrent_jobs = max_concurrent_jobs
        self.heartbeat_interval = heartbeat
        self.owner = Owner(host=host or socket.gethostname(), pid=os.getpid())
        if host:
            # The node named in the status history of what this operator changes.
            repository.node = host
        self._handles: dict[int, ExecutionHandle] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_concurrent_jobs, thread_name_prefix="batchd-job")
        self._heartbeat = Heartbeat(repository, self.active_handles, heartbeat)
        self._observers: list[object] = []
        self._planner = LaunchPlanner(repository, self.registry)

    # ------------------------------------------------------------------ starting

    def start(self, job_name: str, params: RawParams = None) -> JobExecution:
        """Start (or, if its last run failed or stopped, restart) the instance of
        ``job_name`` for ``params`` and wait for it to end."""
        job, execution, job_params = self._launch_start(job_name, params)
        return self._hand_over(job, execution, job_params, wait=True)

    def start_async(self, job_name: str, params: RawParams = None) -> JobExecution:
        """Like :meth:`start`, but return the STARTING execution at once."""
        job, execution, job_params = self._launch_start(job_name, params)
        return self._hand_over(job, execution, job_params, wait=False)

    def start_next(self, job_name: str, params: RawParams = None) -> JobExecution:
        """Start a new instance of ``job_name``: ``params`` plus what the job's incrementer
        gives from its newest execution's parameters (Spring's startNextInstance; by default
        the next ``run_id``). Waits for it to end."""
        job, execution, job_params = self._launch_next(job_name, params)
        return self._hand_over(job, execution, job_params, wait=True)

    def start_next_async(self, job_name: str, params: RawParams = None) -> JobExecution:
        """Like :meth:`start_next`, but return the STARTING execution at once."""
        job, execution, job_params = self._launch_next(job_name, params)
        return self._hand_over(job, execution, job_params, wait=False)

    def _launch_next(
        self, job_name: str, params: RawParams
    ) -> tuple[Job, JobExecution, JobParameters]:
        for attempt in range(_NEXT_ATTEMPTS):
            try:
                return self._launch(self._planner.next(job_name, params))
            except (JobExecutionAlreadyRunning, JobInstanceAlreadyComplete):
                # Another start_next took this run id first: take the next one.
                if attempt == _NEXT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def restart(self, job_or_id: JobOrExecution) -> JobExecution:
        """Restart the newest instance of a job (by name), or the instance of an execution
        (by id), and wait for it to end."""
        job, execution, job_params = self._launch_restart(job_or_id)
        return self._hand_over(job, execution, job_params, wait=True)

    def restart_async(self, job_or_id: JobOrExecution) -> JobExecution:
        job, execution, job_params = self._launch_restart(job_or_id)
        return self._hand_over(job, execution, job_params, wait=False)

    def _launch_start(
        self, job_name: str, params: RawParams
    ) -> tuple[Job, JobExecution, JobParameters]:
        return self._launch(self._planner.start(job_name, params))

    def _launch_restart(self, job_or_id: JobOrExecution) -> tuple[Job, JobExecution, JobParameters]:
        return self._launch(self._planner.restart(job_or_id))

    def _launch(self, launch: Launch) -> tuple[Job, JobExecution, JobParameters]:
        execution = self._create(
            launch.job, launch.params, launch.job_key, launch.identifying, launch.decide
        )
        return launch.job, execution, launch.params

    def _create(
        self,
        job: Job,
        job_params: JobParameters,
        job_key: str,
        identifying: dict[str, Any],
        decide: Callable[[JobExecution | None], None],
    ) -> JobExecution:
        owner, settle = self._claim_owner()
        try:
            execution, previous = self.repository.create_execution(
                job_name=job.name,
                job_key=job_key,
                identifying_params=identifying,
                params=job_params.values,
                owner=owner,
                decide=decide,
            )
        except BaseException:
            settle(None)
            raise
        settle(execution)
        log.info(
            "job execution %d (%s %s) created%s",
            execution.id,
            job.name,
            job_params.json,
            f" restarting execution {previous.id}" if previous is not None else "",
        )
        return execution

    def _claim_owner(self) -> tuple[Owner, Callable[[JobExecution | None], None]]:
        """The owner to record on a new execution, this process, and what to call once the
        execution is created (with None if it was not). The daemon's worker processes own
        theirs: a worker is taken here and kept for the execution, or given back."""
        return self.owner, lambda execution: None

    def _hand_over(
        self, job: Job, execution: JobExecution, job_params: JobParameters, *, wait: bool
    ) -> JobExecution:
        """Give a just-created execution to a runner: in this thread (``wait``, then return
        how it ended) or in the pool (return it as created, STARTING). Until a runner has it,
        nobody would ever end it, so any error on the way ends it FAILED before it is raised."""
        try:
            failpoints.failpoint(AFTER_CREATE_EXECUTION)
            with self._lock:
                self._handles[execution.id] = ExecutionHandle(execution.id)
            self._heartbeat.ensure_running()
            self._notify("on_execution_created", execution)
            if not wait:
                # The caller gets the execution as created; the runner thread changes its
                # own copy from here on.
                as_created = copy.deepcopy(execution)

                def if_cancelled(future: Future[None]) -> None:
                    if future.cancelled():  # shutdown(wait=False) dropped it from the queue
                        self._fail_unstarted(job, execution, "the operator was shut down")

                self._before_pool(job, execution)
                self._pool.submit(self._run, job, execution, job_params).add_done_callback(
                    if_cancelled
                )
                return as_created
        except BaseException as error:
            self._fail_unstarted(job, execution, describe_error(error))
            raise
        self._run(job, execution, job_params)
        return self.get_execution(execution.id)

    def _before_pool(self, job: Job, execution: JobExecution) -> None:
        """Called in the starting thread right before the execution is queued for a pool
        thread (the daemon's process operator hands it to its worker here)."""

    def _fail_unstarted(self, job: Job, execution: JobExecution, reason: str) -> None:
        """End an execution no runner took FAILED with ``reason``; release its handle."""
        try:
            # Read it again: a stop may have been requested since it was created.
            current = self.repository.get_execution(execution.id)
            if current is not None and self.repository.mark_failed(
                current, f"not started: {reason}"
            ):
                log.error(
                    "job execution %d (%s) FAILED before it ran: %s",
                    execution.id,
                    job.name,
                    reason.splitlines()[0],
                )
        except Exception:
            # The database is away: recover() marks it FAILED once its heartbeat is stale.
            log.exception("cannot mark job execution %d FAILED", execution.id)
        finally:
            with self._lock:
                handle = self._handles.pop(execution.id, None)
            if handle is not None:
                handle.done.set()
                self._notify("on_execution_ended", execution)

    def _run(self, job: Job, execution: JobExecution, job_params: JobParameters) -> None:
        handle = self._handles[execution.id]
        try:
            JobRunner(self.repository, job, execution, job_params, handle).run()
        except BaseException:
            log.exception("job execution %d (%s) crashed", execution.id, job.name)
            raise
        finally:
            with self._lock:
                self._handles.pop(execution.id, None)
            handle.done.set()
            self._notify("on_execution_ended", execution)

    # ---------------------------------------------------------- observing, waiting

    def add_observer(self, observer: object) -> None:
        """An object with ``on_execution_created(execution)`` and/or
        ``on_execution_ended(execution)`` (:class:`batchd.interfaces.ExecutionObserver`):
        how the daemon watches the engine. What an observer raises is logged and ignored."""
        self._observers.append(observer)

    def _notify(self, hook: str, execution: JobExecution) -> None:
        for observer in self._observers:
            notify(observer, hook, execution)

    def active_handles(self) -> list[ExecutionHandle]:
        with self._lock:
            return list(self._handles.values())

    def wait(self, execution_id: int, timeout: float | None = None) -> JobExecution:
        """Wait until the execution has ended (and its after_job listeners have run).
        Raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            handle = self._handles.get(execution_id)
        if handle is not None:
            if not handle.done.wait(timeout):
                raise TimeoutError(f"job execution {execution_id} still running after {timeout}s")
            return self.get_execution(execution_id)
        while True:
            execution = self.get_execution(execution_id)
            if not execution.status.is_running:
                return execution
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job execution {execution_id} still running after {timeout}s")
            time.sleep(_POLL_SECONDS)

    # -------------------------------------------------------------- stop, abandon

    def stop(self, job_or_id: JobOrExecution) -> list[JobExecution]:
        """Ask running executions to stop: every running execution of a job (by name), or
        one execution (by id). Returns those it asked; stopping an ended one is no error."""
        job_name, execution_id = parse_identifier(job_or_id)
        if execution_id is not None:
            candidates = [self.repository.require_execution(execution_id)]
        else:
            assert job_name is not None
            if job_name not in self.registry and not self.repository.newest_execution_of_job(
                job_name
            ):
                self.registry.get(job_name)  # raises NoSuchJob
            candidates = [
                execution
                for execution in self.repository.running_executions()
                if execution.job_name == job_name
            ]
        asked = []
        for execution in candidates:
            if not self.repository.request_stop(execution.id):
                continue
            with self._lock:
                handle = self._handles.get(execution.id)
            if handle is not None:
                handle.stop_event.set()
            log.info("job execution %d (%s) STOPPING", execution.id, execution.job_name)
            asked.append(self.get_execution(execution.id))
        return asked

    def abandon(self, execution_id: int | str) -> JobExecution:
        """Mark a STOPPED, FAILED or UNKNOWN execution ABANDONED: never restarted."""
        _, numeric_id = parse_identifier(execution_id)
        if numeric_id is None:
            raise TypeError(f"abandon() takes an execution id, not {execution_id!r}")
        execution = self.repository.abandon(numeric_id)
        log.info("job execution %d (%s) ABANDONED", execution.id, execution.job_name)
        return execution

    # ---------------------------------------------------------------- inspecting

    def get_execution(self, execution_id: int | str) -> JobExecution:
        _, numeric_id = parse_identifier(execution_id)
        if numeric_id is None:
            raise TypeError(f"get_execution() takes an execution id, not {execution_id!r}")
        return self.repository.require_execution(numeric_id)

    def list_executions(
        self,
        job_name: str | None = None,
        status: BatchStatus | str | None = None,
        limit: int = 50,
    ) -> list[JobExecution]:
        """Executions, newest first."""
        return self.repository.list_executions(job_name=job_name, status=status, limit=limit)

    # ------------------------------------------------------------------ recovery

    def recover(
        self, lease: float | timedelta = 60, *, trust_heartbeats: bool = True
    ) -> list[JobExecution]:
        """Mark FAILED the running executions whose owner process is gone (checked on this
        host) or whose heartbeat is older than ``lease`` seconds; they can then be
        restarted. Returns them. With ``trust_heartbeats=False`` (the database was away,
        so old heartbeats prove nothing) only the first check is made."""
        lease_td = lease if isinstance(lease, timedelta) else timedelta(seconds=lease)
        if lease_td.total_seconds() < 3 * self.heartbeat_interval:
            raise ValueError(
                f"lease {lease_td.total_seconds():g}s must be at least three heartbeats "
                f"(3 x {self.heartbeat_interval:g}s)"
            )
        mine = {handle.execution_id for handle in self.active_handles()}
        recovered = []
        for execution, reason in self.repository.stale_executions(
            lease_td,
            host=self.owner.host,
            is_alive=process_is_alive,
            trust_heartbeats=trust_heartbeats,
        ):
            if execution.id in mine:
                continue  # ours and running: its heartbeat is only late
            if self.repository.mark_failed(execution, reason):
                log.warning(
                    "job execution %d (%s) FAILED: %s", execution.id, execution.job_name, reason
                )
                recovered.append(self.get_execution(execution.id))
        return recovered

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, wait: bool = True) -> None:
        """Stop the heartbeat and the pool (running executions finish first if ``wait``)."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        self._heartbeat.stop()

    def __enter__(self) -> JobOperator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
