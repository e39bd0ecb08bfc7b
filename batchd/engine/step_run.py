"""What a step needs while it runs: the repository, its records, its contexts."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchd.engine.listeners import Listeners
from batchd.model import BatchStatus, JobExecution, StepExecution, canonical_json
from batchd.repository import SqlJobRepository, StepEnd


@dataclass
class StepRun:
    """One step execution in progress."""

    repository: SqlJobRepository
    job_execution: JobExecution | None  # None in a partition run by a worker process
    step_execution: StepExecution
    params: Any
    listeners: Listeners
    job_context: dict[str, Any]
    step_context: dict[str, Any]
    stop_requested: Callable[[], bool]


@dataclass
class StepOutcome:
    """How a step ended: its status, exit message and final checkpoint."""

    status: BatchStatus
    execution_context: dict[str, Any] = field(default_factory=dict)
    exit_message: str | None = None
    # A custom exit status (a tasklet's ``ctx.exit_status``); None: the status's name.
    exit_status: str | None = None
    # What failed the step (not recorded): the job decides whether it is permanent.
    error: BaseException | None = None

    def ending(
        self,
        step_execution: StepExecution,
        *,
        instance_id: int,
        step_context: dict[str, Any] | None,
        exit_status: str | None = None,
    ) -> StepEnd:
        """This as the end of ``step_execution``, with the instance's step context (None: a
        partition, which has none) and ``exit_status`` (None: the status's name)."""
        return StepEnd(
            step_execution,
            self.status,
            self.exit_message,
            canonical_json(self.execution_context),
            instance_id,
            step_context,
            exit_status,
        )

    def record(
        self,
        repository: SqlJobRepository,
        step_execution: StepExecution,
        *,
        instance_id: int,
        step_context: dict[str, Any] | None,
    ) -> None:
        """Record this as the end of ``step_execution``, in a transaction of its own."""
        repository.record_step_end(
            self.ending(step_execution, instance_id=instance_id, step_context=step_context)
        )


def describe_error(error: BaseException) -> str:
    """The error's type and message first, then its traceback (for exit_message)."""
    head = f"{type(error).__name__}: {error}"
    return head + "\n" + "".join(traceback.format_exception(error)).rstrip()
