"""Job flows: steps routed on their exit status (Spring Batch's FlowBuilder), and decisions
(Spring Batch's JobExecutionDecider).

A flow is a start node and, per node (a step or a :class:`Decision`), a map from exit-status
patterns to targets: another node, :data:`END`, :data:`FAIL` or :func:`stop_and_restart`.
Patterns are Spring's: ``*`` matches any characters, ``?`` one; the most specific pattern wins.
The flow is resolved and checked once, when the job is built.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from batchd.model import BatchStatus, JobExecution, StepExecution

if TYPE_CHECKING:
    from batchd.engine.job import Step

# Where a stopped flow keeps the node its restart begins at, in the job context (which is
# saved with the execution's end and restored on restart).
RESTART_AT_KEY = "batchd.restart_at"

DecideFunction = Callable[[JobExecution, StepExecution | None], str]


@dataclass(frozen=True, eq=False)
class Decision:
    """A node of a flow that routes without running a step (Spring's JobExecutionDecider):
    ``decide(job_execution, last_step_execution) -> exit status``. It is not a step
    execution: nothing of it is recorded, and it runs again on restart."""

    name: str
    decide: DecideFunction

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a decision needs a non-empty name, not {self.name!r}")
        if not callable(self.decide):
            raise TypeError(f"decision {self.name!r}: decide must be callable")


@dataclass(frozen=True)
class EndState:
    """Where a flow ends: :data:`END` (COMPLETED) or :data:`FAIL` (FAILED)."""

    name: str
    status: BatchStatus


END = EndState("END", BatchStatus.COMPLETED)
FAIL = EndState("FAIL", BatchStatus.FAILED)


@dataclass(frozen=True)
class StopAndRestart:
    """Stop the job (STOPPED); its restart begins at ``step``."""

    step: Any  # a step or its name, resolved to the name by the flow


def stop_and_restart(step: Any) -> StopAndRestart:
    """A target that ends the execution STOPPED; a restart begins at ``step`` (a step, a
    decision, or its name)."""
    return StopAndRestart(step)


Node = Union["Step", Decision]
# A resolved target: a node's name, an end state, or a stop with the name to restart at.
Target = str | EndState | StopAndRestart


def _is_step(value: object) -> bool:
    return isinstance(getattr(value, "name", None), str) and callable(
        getattr(value, "execute", None)
    )


def _specificity(pattern: str) -> tuple[int, int, int, str]:
    # Spring's order: no wildcard, then fewer '*', then fewer '?', then longer, then by text.
    return (pattern.count("*"), pattern.count("?"), -len(pattern), pattern)


def _compile(pattern: str) -> re.Pattern[str]:
    parts = ("." if char == "?" else ".*" if char == "*" else re.escape(char) for char in pattern)
    return re.compile("".join(parts), re.DOTALL)


@dataclass(frozen=True)
class Transition:
    pattern: str
    target: Target
    regex: re.Pattern[str]

    def matches(self, exit_status: str) -> bool:
        return self.regex.fullmatch(exit_status) is not None


@dataclass(frozen=True)
class Flow:
    """A resolved, checked flow: nodes by name and their transitions, most specific first."""

    start: str
    nodes: Mapping[str, Node]
    transitions: Mapping[str, tuple[Transition, ...]]

    def route(self, source: str, exit_status: str) -> Target | None:
        """Where ``exit_status`` of ``source`` leads (None: no pattern matches)."""
        for transition in self.transitions.get(source, ()):
            if transition.matches(exit_status):
                return transition.target
        return None

    def recorded_path(self, completed_exit: Callable[[str], str | None]) -> list[Step]:
        """The steps a restart walks through before it runs one: those that completed
        (``completed_exit(name)`` gives their recorded exit status, None when the step
        would run) and the first that would run; a decision or an end stops the walk."""
        path: list[Step] = []
        name: Target | None = self.start
        while isinstance(name, str) and not isinstance(self.nodes[name], Decision):
            step = self.nodes[name]
            path.append(step)  # type: ignore[arg-type]
            exit_status = completed_exit(name)
            if exit_status is None or len(path) > len(self.nodes):
                break
            name = self.route(name, exit_status)
        return path

    def steps(self) -> list[Step]:
        return [node for node in self.nodes.values() if not isinstance(node, Decision)]

    def describe(self) -> dict[str, dict[str, str]]:
        def name(target: Target) -> str:
            if isinstance(target, EndState):
                return target.name
            if isinstance(target, StopAndRestart):
                return f"stop_and_restart({target.step})"
            return target

        return {
            source: {t.pattern: name(t.target) for t in transitions}
            for source, transitions in self.transitions.items()
        }


def build_flow(job_name: str, start: Any, transitions: Mapping[Any, Mapping[str, Any]]) -> Flow:
    """Resolve names to nodes and check the flow; ValueError naming what is wrong."""
    where = f"job {job_name!r}"
    nodes: dict[str, Node] = {}

    def add(value: object) -> None:
        if isinstance(value, Decision) or _is_step(value):
            name: str = value.name  # type: ignore[attr-defined]
            known = nodes.get(name)
            if known is not None and known is not value:
                raise ValueError(f"{where}: two different steps or decisions are named {name!r}")
            nodes[name] = value  # type: ignore[assignment]

    if not isinstance(transitions, Mapping):
        raise TypeError(f"{where}: transitions must be a mapping, not {transitions!r}")
    add(start)
    for source, routes in transitions.items():
        add(source)
        if not isinstance(routes, Mapping):
            raise TypeError(f"{where}: the transitions of {source!r} must be a mapping")
        for target in routes.values():
            add(target.step if isinstance(target, StopAndRestart) else target)

    def resolve(value: object, role: str) -> str:
        if isinstance(value, str):
            if value not in nodes:
                raise ValueError(f"{where}: {role} {value!r} names no step or decision of the flow")
            return value
        if isinstance(value, Decision) or _is_step(value):
            return value.name  # type: ignore[attr-defined, no-any-return]
        raise ValueError(f"{where}: {role} {value!r} is neither a step nor a decision")

    def resolve_target(value: object, source: str) -> Target:
        if isinstance(value, EndState):
            return value
        if isinstance(value, StopAndRestart):
            return StopAndRestart(resolve(value.step, f"the restart step after {source!r}"))
        return resolve(value, f"the target of {source!r}")

    start_name = resolve(start, "the start")
    resolved: dict[str, tuple[Transition, ...]] = {}
    for source, routes in transitions.items():
        source_name = resolve(source, "the transition source")
        if source_name in resolved:
            raise ValueError(f"{where}: {source_name!r} has two transition maps")
        entries = []
        for pattern, target in routes.items():
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(
                    f"{where}: a pattern of {source_name!r} must be a non-empty string"
                )
            entries.append(
                Transition(pattern, resolve_target(target, source_name), _compile(pattern))
            )
        resolved[source_name] = tuple(sorted(entries, key=lambda t: _specificity(t.pattern)))
    flow = Flow(start_name, nodes, resolved)
    _check_reachable(where, flow)
    return flow


def _check_reachable(where: str, flow: Flow) -> None:
    reached = {flow.start}
    pending = [flow.start]
    while pending:
        for transition in flow.transitions.get(pending.pop(), ()):
            target = transition.target
            name = target.step if isinstance(target, StopAndRestart) else target
            if isinstance(name, str) and name not in reached:
                reached.add(name)
                pending.append(name)
    unreached = [name for name in flow.nodes if name not in reached]
    if unreached:
        raise ValueError(
            f"{where}: no transition reaches {', '.join(repr(name) for name in unreached)}"
        )
