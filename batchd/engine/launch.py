"""What a start, a next start or a restart would create, and the rules that may refuse it
(DESIGN §3): which job instance, with which parameters, and whether it may run again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchd.engine.job import Job
from batchd.engine.registry import JobRegistry
from batchd.errors import (
    InvalidJobParameters,
    JobExecutionAlreadyRunning,
    JobInstanceAlreadyComplete,
    JobRestartError,
    NoSuchJob,
    StartLimitExceeded,
)
from batchd.model import BatchStatus, JobExecution, JobParameters, RawParams, canonical_json
from batchd.model.params import parse_params
from batchd.repository import SqlJobRepository

JobOrExecution = str | int


def parse_identifier(job_or_id: JobOrExecution) -> tuple[str | None, int | None]:
    """An int, or a string of digits, is an execution id; any other string a job name."""
    if isinstance(job_or_id, bool):
        raise TypeError(f"expected a job name or an execution id, not {job_or_id!r}")
    if isinstance(job_or_id, int):
        return None, job_or_id
    if isinstance(job_or_id, str):
        text = job_or_id.strip()
        if text.isdigit():
            return None, int(text)
        if not text:
            raise NoSuchJob("an empty job name names no job")
        return text, None
    raise TypeError(f"expected a job name or an execution id, not {job_or_id!r}")


@dataclass(frozen=True)
class Launch:
    """A new execution to create: of ``job`` with ``params``, for the instance ``job_key``
    (identified by ``identifying``). ``decide`` sees the instance's last execution inside
    the transaction that creates the new one, and raises to refuse it."""

    job: Job
    params: JobParameters
    job_key: str
    identifying: dict[str, Any]
    decide: Callable[[JobExecution | None], None]


class LaunchPlanner:
    """Resolves a start or a restart of the jobs of ``registry`` against the executions
    recorded in ``repository``; writes nothing."""

    def __init__(self, repository: SqlJobRepository, registry: JobRegistry) -> None:
        self.repository = repository
        self.registry = registry

    def start(self, job_name: str, params: RawParams) -> Launch:
        """The instance of ``job_name`` for ``params``: new, or one whose last run failed or
        stopped."""
        job = self.registry.get(job_name)
        job_params = job.parameters(params)

        def decide(last: JobExecution | None) -> None:
            if last is None:
                return
            self._refuse_unless_restartable(job, last)

        return Launch(job, job_params, job_params.job_key, job_params.identifying, decide)

    def next(self, job_name: str, params: RawParams) -> Launch:
        """A new instance: ``params`` plus what the job's incrementer gives from its newest
        execution's parameters (Spring's startNextInstance)."""
        job = self.registry.get(job_name)
        if job.incrementer is None:
            raise InvalidJobParameters(
                f"job {job_name!r} has no incrementer: build it with .incrementer() to start "
                "it with the next run id"
            )
        given = parse_params(params)
        newest = self.repository.newest_execution_of_job(job_name)
        increment = job.incrementer(dict(newest.params) if newest is not None else None)
        job_params = job.parameters({**given, **increment})
        dropped = sorted(set(increment) - set(job_params.identifying))
        if dropped:
            raise InvalidJobParameters(
                f"job {job_name!r}: {', '.join(dropped)} from the incrementer must "
                "identify the instance (declare it in the params_model; not "
                "non_identifying)"
            )
        return self.start(job_name, job_params.values)

    def restart(self, job_or_id: JobOrExecution) -> Launch:
        """The newest instance of a job (by name), or the instance of an execution (by id),
        with its identifying parameters and its last run's other parameters."""
        job_name, execution_id = parse_identifier(job_or_id)
        if execution_id is not None:
            target = self.repository.require_execution(execution_id)
        else:
            assert job_name is not None
            newest = self.repository.newest_execution_of_job(job_name)
            if newest is None:
                self.registry.get(job_name)  # NoSuchJob if it is not even registered
                raise JobRestartError(f"job {job_name!r} has no execution to restart")
            target = newest
        job = self.registry.get(target.job_name)
        instance = self.repository.get_instance(target.instance_id)
        last = self.repository.last_execution_of_instance(target.instance_id)
        assert instance is not None and last is not None
        if not last.status.is_restartable:
            raise JobRestartError(
                f"job execution {last.id} of job {job.name!r} is {last.status.value}: only "
                "STOPPED, FAILED or UNKNOWN executions can be restarted"
            )
        # The instance's identifying parameters, with the previous run's other parameters.
        job_params = job.parameters(last.params)

        def decide(current_last: JobExecution | None) -> None:
            if current_last is None or not current_last.status.is_restartable:
                status = current_last.status.value if current_last else "gone"
                raise JobRestartError(
                    f"job {job.name!r} instance {instance.id} changed while restarting: "
                    f"its last execution is {status}"
                )
            self._refuse_unless_restartable(job, current_last)

        return Launch(job, job_params, instance.job_key, instance.params, decide)

    def _refuse_unless_restartable(self, job: Job, last: JobExecution) -> None:
        """The rules of DESIGN §3 for an instance that has run before."""
        if last.status.is_running:
            raise JobExecutionAlreadyRunning(
                f"job {job.name!r} is already running for {canonical_json(last.params)} "
                f"(execution {last.id}, {last.status.value})"
            )
        if last.status == BatchStatus.COMPLETED:
            raise JobInstanceAlreadyComplete(
                f"job {job.name!r} already COMPLETED for {canonical_json(last.params)} "
                f"(execution {last.id})"
            )
        if last.status == BatchStatus.ABANDONED:
            raise JobInstanceAlreadyComplete(
                f"job {job.name!r} for {canonical_json(last.params)} was ABANDONED "
                f"(execution {last.id}): it is not run again"
            )
        if not job.restartable:
            raise JobRestartError(
                f"job {job.name!r} is not restartable and its execution {last.id} "
                f"ended {last.status.value}"
            )
        self._check_start_limits(job, last.instance_id)

    def _check_start_limits(self, job: Job, instance_id: int) -> None:
        """Refuse a restart whose first steps to run are out of starts, before anything
        is written (the runner checks every step again as it reaches it)."""

        def completed_exit(name: str) -> str | None:
            last = self.repository.step_history(instance_id, name).last
            if last is None or last.status != BatchStatus.COMPLETED:
                return None
            return last.exit_status or last.status.value

        steps = job.steps if job.flow is None else job.flow.recorded_path(completed_exit)
        for step in steps:
            history = self.repository.step_history(instance_id, step.name)
            completed = history.last is not None and history.last.status == BatchStatus.COMPLETED
            if completed and not step.allow_start_if_complete:
                continue
            if step.start_limit is not None and history.start_count >= step.start_limit:
                raise StartLimitExceeded(
                    f"step {step.name!r} of job {job.name!r} has been started "
                    f"{history.start_count} times (start_limit {step.start_limit})"
                )
            if not completed:
                return  # the run resumes here; later steps are checked when reached
