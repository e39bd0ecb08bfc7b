"""Runs one job execution: its steps in order, recorded in the repository."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from batchd import failpoints
from batchd.engine.flow_walk import FlowWalk, StepResult, call_collecting
from batchd.engine.job import Job, Step
from batchd.engine.step_run import StepOutcome, StepRun, describe_error
from batchd.errors import ExecutionLost, PermanentError, StartLimitExceeded
from batchd.model import BatchStatus, JobExecution, JobParameters, StepExecution, canonical_json
from batchd.repository import SqlJobRepository, StepEnd

log = logging.getLogger(__name__)

# The exit status of a job that failed with an error it marks permanent: not retried.
FAILED_PERMANENT = "FAILED_PERMANENT"

# Seconds to wait between attempts to record an execution's end while the database is away.
END_WRITE_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)

AFTER_STEP_END = failpoints.declare(
    "engine.after_step_end",
    "a step's end is recorded, in the transaction that starts the next step (or alone before "
    "a decision or the after_job listeners), and nothing after it ran: recover() marks the "
    "execution and the started step FAILED, and a restart skips the COMPLETED step and runs "
    "the rest",
)


class _StopBeforeStart(Exception):
    """The execution's start found a stop requested: it stops before ``node``."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.node = node


@dataclass
class ExecutionHandle:
    """This process's handle on an execution it runs: stop flag and completion."""

    execution_id: int
    stop_event: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    lost: bool = False

    def stop_requested(self) -> bool:
        return self.stop_event.is_set()


class JobRunner:
    """Runs ``execution`` of ``job`` in the calling thread."""

    # The end of the step that ran last, not recorded yet: it is recorded in the transaction
    # that starts the next step, or alone before anything else happens (a decision, the
    # after_job listeners, the job's end). Nothing runs between a step's end and the next
    # step's start, so a kill there leaves only a state a kill in the next step's first
    # instant leaves too.
    _step_end: StepEnd | None = None
    # The execution's start, not recorded yet (the job has no before_job listener to see
    # it): recorded with the first step's start, or alone before anything else happens.
    _starting = False

    def __init__(
        self,
        repository: SqlJobRepository,
        job: Job,
        execution: JobExecution,
        params: JobParameters,
        handle: ExecutionHandle,
    ) -> None:
        self.repository = repository
        self.job = job
        self.execution = execution
        self.params = params
        self.handle = handle
        # A step failed with an error the job marks permanent: no automatic retry.
        self.permanent_failure = False

    def run(self) -> None:
        execution, job = self.execution, self.job
        if job.listeners.has("before_job"):
            try:
                self.repository.mark_started(execution)
            except ExecutionLost as lost:
                log.warning("job execution %d (%s) not started: %s", execution.id, job.name, lost)
                return
            self._started()
        else:
            self._starting = True
        job_context: dict[str, object] = {}
        exit_status: str | None = None
        try:
            try:
                job_context = self.repository.load_job_context(execution.id)
                job.listeners.call("before_job", execution)
                if job.flow is None:
                    status, message, exit_status = self._run_steps(job_context)
                else:
                    status, message, exit_status = FlowWalk(self, job.flow, job_context).run()
            finally:
                self._record_start()
                if job.listeners.has("after_job"):
                    # They see the last step's end in the repository, recorded alone; without
                    # them it is recorded with the job's end.
                    self.record_step_end()
        except _StopBeforeStart as stopped:
            before = f"step {stopped.node!r}" if job.flow is None else repr(stopped.node)
            status, message = BatchStatus.STOPPED, f"stopped before {before}"
        except ExecutionLost as lost:
            log.warning("job execution %d (%s) gave up: %s", execution.id, job.name, lost)
            return
        except StartLimitExceeded as error:
            status, message = BatchStatus.FAILED, f"StartLimitExceeded: {error}"
        except SQLAlchemyError as error:
            # A step's end could not be recorded: nobody knows how far it got.
            status, message = BatchStatus.UNKNOWN, describe_error(error)
        except Exception as error:
            status, message = BatchStatus.FAILED, describe_error(error)
        if status != BatchStatus.COMPLETED or exit_status is None:
            exit_status = status.value
        if status == BatchStatus.FAILED and self.permanent_failure:
            exit_status = FAILED_PERMANENT
        execution.status, execution.exit_message = status, message
        execution.exit_status = exit_status
        try:
            job.listeners.call("after_job", execution)
        except Exception as error:
            status, message = (
                BatchStatus.FAILED,
                "after_job listener failed: " + describe_error(error),
            )
            execution.exit_status = status.value
        self._record_end(status, message, job_context)

    def _run_steps(
        self, job_context: dict[str, object]
    ) -> tuple[BatchStatus, str | None, str | None]:
        """The steps in order: a step that does not complete ends the job with its status.
        A COMPLETED job's exit status is its last step's (Spring's SimpleJob)."""
        exit_status = None
        for step in self.job.steps:
            if self.handle.stop_requested():
                return BatchStatus.STOPPED, f"stopped before step {step.name!r}", None
            ran = self.run_step(step, job_context)
            if ran.status != BatchStatus.COMPLETED:
                return ran.status, f"step {step.name!r} {ran.status.value}: {ran.message}", None
            exit_status = ran.exit_status
        return BatchStatus.COMPLETED, None, exit_status

    def run_step(self, step: Step, job_context: dict[str, object]) -> StepResult:
        """Run ``step`` (or skip it when it COMPLETED before): how it ended."""
        outcome, step_execution = self._run_step(step, job_context)
        if outcome is None:  # skipped: its recorded end stands (and routes as it did)
            assert step_execution is not None
            return StepResult(
                BatchStatus.COMPLETED,
                step_execution.exit_status or BatchStatus.COMPLETED.value,
                None,
                step_execution,
            )
        assert step_execution is not None
        if outcome.error is not None and isinstance(
            outcome.error, (PermanentError, *self.job.permanent_errors)
        ):
            self.permanent_failure = True
        return StepResult(
            outcome.status,
            step_execution.exit_status or outcome.status.value,
            outcome.exit_message,
            step_execution,
        )

    def _started(self) -> None:
        execution = self.execution
        if execution.status == BatchStatus.STOPPING:
            self.handle.stop_event.set()
        log.info(
            "job execution %d (%s %s) STARTED",
            execution.id,
            self.job.name,
            canonical_json(execution.params),
        )

    def _record_start(self) -> None:
        """Record the execution's start, if not yet recorded, alone."""
        if self._starting:
            self._starting = False
            self.repository.mark_started(self.execution)
            self._started()

    def record_pending(self, node: str) -> None:
        """Record what is not recorded yet (the execution's start, the last step's end)
        before ``node`` does anything but start a step: a decision decides, a step is
        skipped or refused. A stop requested before the execution began stops it there."""
        if self._starting:
            self._record_start()
            if self.handle.stop_requested():
                raise _StopBeforeStart(node)
        self.record_step_end()

    def record_step_end(self) -> None:
        """Record the end of the step that ran last, if not yet recorded, alone."""
        ending, self._step_end = self._step_end, None
        if ending is not None:
            self.repository.record_step_end(ending)
            failpoints.failpoint(AFTER_STEP_END)
            self._log_step_end(ending)

    def _log_step_end(self, ending: StepEnd) -> None:
        step_execution = ending.step
        log.info(
            "job execution %d: step %s %s (read %d, written %d)",
            self.execution.id,
            step_execution.step_name,
            ending.status.value,
            step_execution.read_count,
            step_execution.write_count,
        )

    def _run_step(
        self, step: Step, job_context: dict[str, object]
    ) -> tuple[StepOutcome | None, StepExecution | None]:
        execution = self.execution
        if self._step_end is not None and self._step_end.step.step_name == step.name:
            self.record_step_end()  # its history is what this run of it starts from
        history = self.repository.step_history(execution.instance_id, step.name)
        skipped = (
            history.last is not None
            and history.last.status == BatchStatus.COMPLETED
            and not step.allow_start_if_complete
        )
        refused = step.start_limit is not None and history.start_count >= step.start_limit
        if skipped or refused:
            self.record_pending(step.name)
        if skipped:
            log.info(
                "job execution %d: step %s already COMPLETED, skipped", execution.id, step.name
            )
            return None, history.last
        if refused:
            raise StartLimitExceeded(
                f"step {step.name!r} of job {self.job.name!r} has been started "
                f"{history.start_count} times (start_limit {step.start_limit})"
            )
        # Resume from the checkpoint of an unfinished step; a completed step re-runs afresh.
        resume_from = (
            history.last.execution_context
            if history.last is not None and history.last.status != BatchStatus.COMPLETED
            else {}
        )
        ending, self._step_end = self._step_end, None
        starting, self._starting = self._starting, False
        created = self.repository.create_step_executions(
            execution, [(step.name, resume_from)], ending=ending, starting=starting
        )
        if starting:
            self._started()
        if not created:  # a stop requested before the execution began: it began STOPPING
            raise _StopBeforeStart(step.name)
        step_execution = created[0]
        if ending is not None:
            failpoints.failpoint(AFTER_STEP_END)
            self._log_step_end(ending)
        execution.step_executions.append(step_execution)
        listeners = self.job.listeners + step.listeners
        step_context = self.repository.load_step_context(execution.instance_id, step.name)
        step_execution.job_context, step_execution.step_context = job_context, step_context
        run = StepRun(
            repository=self.repository,
            job_execution=execution,
            step_execution=step_execution,
            params=self.params.typed,
            listeners=listeners,
            job_context=job_context,
            step_context=step_context,
            stop_requested=self.handle.stop_requested,
        )
        try:
            listeners.call("before_step", step_execution)
            outcome = step.execute(run)
        except ExecutionLost:
            raise
        except Exception as error:
            outcome = StepOutcome(
                BatchStatus.FAILED, step_execution.execution_context, describe_error(error)
            )
        step_execution.status, step_execution.exit_message = outcome.status, outcome.exit_message
        step_execution.exit_status = (
            outcome.exit_status
            if outcome.exit_status and outcome.status == BatchStatus.COMPLETED
            else outcome.status.value
        )
        try:
            # An after_step listener that returns a string sets the exit status (Spring's
            # StepExecutionListener.afterStep returning an ExitStatus).
            for returned in call_collecting(listeners, "after_step", step_execution):
                if isinstance(returned, str) and returned:
                    step_execution.exit_status = returned
        except Exception as error:
            outcome = StepOutcome(
                BatchStatus.FAILED,
                outcome.execution_context,
                "after_step listener failed: " + describe_error(error),
            )
            step_execution.exit_status = BatchStatus.FAILED.value
        self._step_end = outcome.ending(
            step_execution,
            instance_id=execution.instance_id,
            step_context=step_context,
            exit_status=step_execution.exit_status,
        )
        return outcome, step_execution

    def _record_end(
        self, status: BatchStatus, message: str | None, job_context: dict[str, object]
    ) -> None:
        execution = self.execution
        # The last step's end, when no after_job listener had to see it first.
        ending, self._step_end = self._step_end, None
        for delay in (*END_WRITE_BACKOFF, None):
            try:
                self.repository.finish_execution(
                    execution,
                    status,
                    message,
                    job_context,
                    exit_status=execution.exit_status,
                    ending=ending,
                )
            except ExecutionLost as lost:
                log.warning("job execution %d (%s): %s", execution.id, self.job.name, lost)
                return
            except SQLAlchemyError as error:
                if delay is None:
                    log.error(
                        "job execution %d (%s) ended %s but the end could not be recorded (%s); "
                        "crash recovery will mark it FAILED",
                        execution.id,
                        self.job.name,
                        status.value,
                        error,
                    )
                    return
                log.warning(
                    "recording the end of job execution %d failed, retrying: %s",
                    execution.id,
                    error,
                )
                time.sleep(delay)
                continue
            if ending is not None:
                self._log_step_end(ending)
            log.info(
                "job execution %d (%s %s) %s",
                execution.id,
                self.job.name,
                canonical_json(execution.params),
                status.value,
            )
            return
