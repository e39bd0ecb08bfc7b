"""A step that calls one function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchd.engine.listeners import Listeners
from batchd.engine.step_run import StepOutcome, StepRun, describe_error
from batchd.errors import ExecutionLost, JobStopped
from batchd.model import BatchStatus, ExecutionContext, StepContext

Tasklet = Callable[[StepContext], Any]


@dataclass(eq=False)  # hashable by identity: steps are keys of a job's flow
class TaskletStep:
    """Runs ``tasklet(ctx)`` once. A tasklet that raises JobStopped ends STOPPED; any other
    error ends FAILED. It does not run inside a repository transaction."""

    name: str
    tasklet: Tasklet
    listeners: Listeners = field(default_factory=Listeners)
    allow_start_if_complete: bool = False
    start_limit: int | None = None

    def execute(self, run: StepRun) -> StepOutcome:
        execution_context = ExecutionContext(
            run.step_execution.execution_context,
            params=run.params,
            job_context=run.job_context,
            step_context=run.step_context,
        )
        ctx = StepContext(
            step_execution=run.step_execution,
            execution_context=execution_context,
            stop_check=run.stop_requested,
        )
        try:
            self.tasklet(ctx)
        except JobStopped as stopped:
            return StepOutcome(BatchStatus.STOPPED, dict(execution_context), str(stopped))
        except ExecutionLost:
            raise
        except Exception as error:
            return StepOutcome(
                BatchStatus.FAILED, dict(execution_context), describe_error(error), error=error
            )
        return StepOutcome(
            BatchStatus.COMPLETED, dict(execution_context), exit_status=ctx.exit_status
        )
