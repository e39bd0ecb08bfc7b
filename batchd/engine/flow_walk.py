"""Running a job's flow: from its start (or where a stop_and_restart said), each node's exit
status picks the next one, until END, FAIL, a stop, or an exit status nothing matches.

On restart the flow is walked from its start again (Spring's behaviour): a step that
COMPLETED before is not run again and its recorded exit status routes as it did, so the
restart follows the path the failed execution took; decisions are asked again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchd.engine.flow import RESTART_AT_KEY, Decision, EndState, Flow, StopAndRestart
from batchd.engine.listeners import Listeners
from batchd.model import BatchStatus, StepExecution

if TYPE_CHECKING:
    from batchd.engine.job_runner import JobRunner

log = logging.getLogger(__name__)

# Statuses a flow does not route on: the job ends with them (a stop is a stop, whatever the
# transitions say; UNKNOWN means the step's end could not be recorded).
_UNROUTED = frozenset({BatchStatus.STOPPED, BatchStatus.STOPPING, BatchStatus.UNKNOWN})


@dataclass
class StepResult:
    """How a step ended in this execution (or, skipped, in the one that completed it)."""

    status: BatchStatus
    exit_status: str
    message: str | None
    step_execution: StepExecution


Ending = tuple[BatchStatus, str | None, str | None]


def call_collecting(listeners: Listeners, hook: str, *args: object) -> list[Any]:
    """Call ``hook`` on every listener that has it, in order; what each returned."""
    results = []
    for obj in listeners.objects:
        method = getattr(obj, hook, None)
        if callable(method):
            results.append(method(*args))
    return results


class FlowWalk:
    """One execution's walk through ``flow``."""

    def __init__(self, runner: JobRunner, flow: Flow, job_context: dict[str, Any]) -> None:
        self.runner = runner
        self.flow = flow
        self.job_context = job_context
        self.last_step: StepExecution | None = None

    def run(self) -> Ending:
        # Kept (not popped): a restart that fails after it begins there again, and skips
        # what has COMPLETED since.
        restart_at = self.job_context.get(RESTART_AT_KEY)
        node = restart_at if isinstance(restart_at, str) and restart_at in self.flow.nodes else None
        name = node or self.flow.start
        execution = self.runner.execution
        while True:
            if self.runner.handle.stop_requested():
                return BatchStatus.STOPPED, f"stopped before {name!r}", None
            item = self.flow.nodes[name]
            if isinstance(item, Decision):
                self.runner.record_pending(name)  # a decider sees what ran as recorded
                exit_status = str(item.decide(execution, self.last_step))
                log.info("job execution %d: decision %s said %s", execution.id, name, exit_status)
                message = None
            else:
                result = self.runner.run_step(item, self.job_context)
                self.last_step = result.step_execution
                if result.status in _UNROUTED:
                    return (
                        result.status,
                        f"step {name!r} {result.status.value}: {result.message}",
                        None,
                    )
                exit_status, message = result.exit_status, result.message
                if name not in self.flow.transitions:
                    # A step without transitions ends the flow with its own status.
                    if result.status == BatchStatus.COMPLETED:
                        return BatchStatus.COMPLETED, None, exit_status
                    return result.status, f"step {name!r} {result.status.value}: {message}", None
            target = self.flow.route(name, exit_status)
            if target is None:
                kind = "decision" if isinstance(item, Decision) else "step"
                detail = f" ({message.splitlines()[0]})" if message else ""
                return (
                    BatchStatus.FAILED,
                    f"{kind} {name!r} ended with exit status {exit_status!r}, which no "
                    f"transition of job {self.runner.job.name!r} matches{detail}",
                    None,
                )
            if isinstance(target, EndState):
                if target.status == BatchStatus.COMPLETED:
                    return BatchStatus.COMPLETED, None, None  # END: exit status COMPLETED
                return (
                    target.status,
                    f"the flow ended {target.name} after {name!r} (exit status {exit_status!r})",
                    None,
                )
            if isinstance(target, StopAndRestart):
                self.job_context[RESTART_AT_KEY] = target.step
                return (
                    BatchStatus.STOPPED,
                    f"stopped after {name!r} (exit status {exit_status!r}); a restart begins "
                    f"at {target.step!r}",
                    None,
                )
            name = target
