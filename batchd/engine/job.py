"""A job: a named sequence of steps, with its parameter rules and listeners."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from batchd.engine.flow import Flow
from batchd.engine.listeners import Listeners
from batchd.engine.step_run import StepOutcome, StepRun
from batchd.model import JobParameters, RawParams, build_parameters


class Step(Protocol):
    """What the job runner needs of a step (TaskletStep, ChunkStep, PartitionStep...)."""

    name: str
    listeners: Listeners
    allow_start_if_complete: bool
    start_limit: int | None

    def execute(self, run: StepRun) -> StepOutcome: ...


class Incrementer(Protocol):
    """Spring's JobParametersIncrementer: the parameters of the next instance, from those of
    the job's newest execution (None when it never ran)."""

    def __call__(self, previous: dict[str, Any] | None) -> dict[str, Any]: ...


@dataclass
class Job:
    """Built by :class:`~batchd.JobBuilder`; register it to run it."""

    name: str
    steps: Sequence[Step]
    params_model: type[BaseModel] | None = None
    non_identifying: frozenset[str] = frozenset()
    listeners: Listeners = field(default_factory=Listeners)
    restartable: bool = True
    # None: the steps run in order, and a step that does not complete ends the job.
    flow: Flow | None = None
    # Spring's JobParametersIncrementer: the parameters ``start_next`` adds (a new run_id).
    incrementer: Incrementer | None = None
    # Errors that fail the job for good: automatic retries do not restart it.
    permanent_errors: tuple[type[BaseException], ...] = ()

    def parameters(self, raw: RawParams) -> JobParameters:
        """Validate ``raw`` for this job (InvalidJobParameters naming the field)."""
        return build_parameters(
            self.name, raw, model=self.params_model, non_identifying=self.non_identifying
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "steps": [step.name for step in self.steps],
            "restartable": self.restartable,
            "params_model": self.params_model.__name__ if self.params_model else None,
            **({"flow": self.flow.describe()} if self.flow is not None else {}),
        }
