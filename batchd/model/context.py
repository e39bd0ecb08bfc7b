"""Contexts handed to user code: tasklets, readers/writers (ItemStream), chunk listeners."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchd.errors import JobStopped
from batchd.model.records import StepExecution


class ExecutionContext(dict[str, Any]):
    """The checkpoint of one step execution: a JSON-serialisable mutable mapping.

    Readers and writers save their position here in ``update()`` and find it again in
    ``open()``. ``params`` (the job parameters, typed when the job has a ``params_model``)
    and ``partition`` (this partition's context, or None) are read-only attributes;
    ``job_context`` and ``step_context`` are the step's (mutable; a partition has its own
    empty ones, which are not kept).
    """

    def __init__(
        self,
        data: dict[str, Any] | None = None,
        *,
        params: Any = None,
        partition: dict[str, Any] | None = None,
        job_context: dict[str, Any] | None = None,
        step_context: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(data or {})
        self._params = params if params is not None else {}
        self._partition = partition
        self.job_context: dict[str, Any] = job_context if job_context is not None else {}
        self.step_context: dict[str, Any] = step_context if step_context is not None else {}

    @property
    def params(self) -> Any:
        return self._params

    @property
    def partition(self) -> dict[str, Any] | None:
        return self._partition

    def __reduce__(self) -> Any:
        # Pickled for process executors: keep the attributes, not only the dict.
        return (
            _rebuild_execution_context,
            (dict(self), self._params, self._partition, self.job_context, self.step_context),
        )


def _rebuild_execution_context(
    data: dict[str, Any],
    params: Any,
    partition: dict[str, Any] | None,
    job_context: dict[str, Any] | None = None,
    step_context: dict[str, Any] | None = None,
) -> ExecutionContext:
    return ExecutionContext(
        data,
        params=params,
        partition=partition,
        job_context=job_context,
        step_context=step_context,
    )


class _OfTheStep:
    """``job_context`` and ``step_context``: the step's, as its execution context holds them
    (the job context kept with the execution, the step context per instance and step, at
    step end)."""

    execution_context: ExecutionContext

    @property
    def job_context(self) -> dict[str, Any]:
        return self.execution_context.job_context

    @property
    def step_context(self) -> dict[str, Any]:
        return self.execution_context.step_context


@dataclass(eq=False, kw_only=True)
class StepContext(_OfTheStep):
    """What a tasklet receives.

    - ``params``: the job parameters (dict, or the validated pydantic model);
    - ``execution_context``: this step's checkpoint, saved when the tasklet returns or raises;
    - ``step_context``: kept per job instance and step, across executions;
    - ``job_context``: shared by the steps of one execution, restored on restart;
    - ``stop_requested`` / ``check_stop()``: cooperative stop;
    - ``exit_status``: set it (e.g. ``"NOOP"``) to end a COMPLETED step with that exit
      status, which a job flow routes on (Spring's ``contribution.setExitStatus``).
    """

    step_execution: StepExecution
    execution_context: ExecutionContext
    # The engine's answer to "was a stop requested?", asked at each call.
    stop_check: Callable[[], bool]
    exit_status: str | None = None

    @property
    def params(self) -> Any:
        return self.execution_context.params

    @property
    def stop_requested(self) -> bool:
        return self.stop_check()

    def check_stop(self) -> None:
        """Raise :class:`JobStopped` if a stop was requested; the step then ends STOPPED."""
        if self.stop_check():
            raise JobStopped(f"stop requested for step {self.step_execution.step_name!r}")


@dataclass
class ChunkContext(_OfTheStep):
    """What chunk listeners receive, with the step's ``job_context`` and ``step_context``
    (kept as a tasklet's are)."""

    step_execution: StepExecution
    execution_context: ExecutionContext
    items: list[Any]
