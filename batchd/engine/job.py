"""A job: a named sequence of steps, with its parameter rules and listeners."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

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


@dataclass
class Job:
    """Built by :class:`~batchd.JobBuilder`; register it to run it."""

    name: str
    steps: Sequence[Step]
    params_model: type[BaseModel] | None = None
    non_identifying: frozenset[str] = frozenset()
    listeners: Listeners = field(default_factory=Listeners)
    restartable: bool = True

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
        }
