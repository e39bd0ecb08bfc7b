"""Job flows (DESIGN §8): routing on exit statuses, decisions, END/FAIL/stop_and_restart, and
restart along the failed path, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from batchd import (
    END,
    FAIL,
    BatchStatus,
    Decision,
    JobBuilder,
    JobExecution,
    JobOperator,
    JobRegistry,
    StepBuilder,
    StepContext,
    StepExecution,
    stop_and_restart,
)
from batchd.engine import Step
from tests.support.jobs import CountingReader

DAY = {"date": "2026-11-30"}


class Script:
    """Tasklets that record their calls and end as told: ``outcomes[name]`` is an exit status
    to set, or an exception to raise."""

    def __init__(self, **outcomes: Any) -> None:
        self.outcomes: dict[str, Any] = outcomes
        self.calls: list[str] = []

    def step(self, name: str) -> Step:
        def tasklet(ctx: StepContext) -> None:
            self.calls.append(name)
            outcome = self.outcomes.get(name)
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome is not None:
                ctx.exit_status = outcome

        return StepBuilder(name).tasklet(tasklet).build()


def steps_of(execution: JobExecution) -> dict[str, tuple[str, str | None]]:
    return {s.step_name: (s.status.value, s.exit_status) for s in execution.step_executions}


def eod_job(script: Script, decide: Any) -> Any:
    load, post, monthly, cleanup = (script.step(n) for n in ("load", "post", "monthly", "cleanup"))
    month_end = Decision("month_end", decide)
    return (
        JobBuilder("eod")
        .flow(
            start=load,
            transitions={
                load: {"FAILED": cleanup, "*": post},
                post: {"NOOP": END, "*": month_end},
                month_end: {"YES": monthly, "NO": END},
                monthly: {"*": END},
                cleanup: {"*": FAIL},
            },
        )
        .build()
    )


def test_the_design_example_routes_on_exit_statuses_and_decisions(
    operator: JobOperator, registry: JobRegistry
) -> None:
    script = Script()
    seen: list[tuple[int, str | None]] = []

    def decide(execution: JobExecution, last: StepExecution | None) -> str:
        seen.append((execution.id, last.step_name if last else None))
        return "YES" if execution.params["date"].endswith("-30") else "NO"

    registry.register(eod_job(script, decide))
    month_end = operator.start("eod", DAY)
    assert month_end.status == BatchStatus.COMPLETED
    assert script.calls == ["load", "post", "monthly"]
    assert seen == [(month_end.id, "post")]
    assert steps_of(month_end) == {
        "load": ("COMPLETED", "COMPLETED"),
        "post": ("COMPLETED", "COMPLETED"),
        "monthly": ("COMPLETED", "COMPLETED"),
    }
    assert month_end.exit_status == "COMPLETED"

    script.calls.clear()
    assert operator.start("eod", {"date": "2026-11-20"}).status == BatchStatus.COMPLETED
    assert script.calls == ["load", "post"]

    script.calls.clear()
    script.outcomes["post"] = "NOOP"
    quiet = operator.start("eod", {"date": "2026-11-21"})
    assert quiet.status == BatchStatus.COMPLETED
    assert script.calls == ["load", "post"]
    assert steps_of(quiet)["post"] == ("COMPLETED", "NOOP")
    assert len(seen) == 2  # the decision was not reached

    script.calls.clear()
    script.outcomes["load"] = OSError("feed missing")
    failed = operator.start("eod", {"date": "2026-11-22"})
    assert script.calls == ["load", "cleanup"]
    assert failed.status == BatchStatus.FAILED and failed.exit_status == "FAILED"
    assert "ended FAIL after 'cleanup'" in (failed.exit_message or "")
    assert steps_of(failed) == {
        "load": ("FAILED", "FAILED"),
        "cleanup": ("COMPLETED", "COMPLETED"),
    }


def test_the_most_specific_pattern_wins(operator: JobOperator, registry: JobRegistry) -> None:
    script = Script(first="NOOP")
    first = script.step("first")
    targets = {name: script.step(name) for name in ("any", "prefix", "exact", "one_char")}
    registry.register(
        JobBuilder("specific")
        .flow(
            start=first,
            transitions={
                first: {
                    "*": targets["any"],
                    "NO*": targets["prefix"],
                    "NO?P": targets["one_char"],
                    "NOOP": targets["exact"],
                }
            },
        )
        .build()
    )
    for exit_status, expected in [
        ("NOOP", "exact"),
        ("NOAP", "one_char"),
        ("NOTHING", "prefix"),
        ("DONE", "any"),
    ]:
        script.outcomes["first"] = exit_status
        script.calls.clear()
        assert operator.start("specific", {"case": exit_status}).status == BatchStatus.COMPLETED
        assert script.calls == ["first", expected]


def test_an_unmatched_exit_status_fails_the_job_naming_step_and_status(
    operator: JobOperator, registry: JobRegistry
) -> None:
    script = Script(check="ODD")
    check, after = script.step("check"), script.step("after")
    registry.register(
        JobBuilder("strict").flow(start=check, transitions={check: {"COMPLETED": after}}).build()
    )
    execution = operator.start("strict", DAY)
    assert execution.status == BatchStatus.FAILED
    assert "step 'check' ended with exit status 'ODD'" in (execution.exit_message or "")
    assert script.calls == ["check"]


def test_an_after_step_listener_returning_a_string_sets_the_exit_status(
    operator: JobOperator, registry: JobRegistry
) -> None:
    class EmptyInput:
        def after_step(self, step_execution: StepExecution) -> str | None:
            return "EMPTY" if step_execution.read_count == 0 else None

    chunk = (
        StepBuilder("read")
        .reader(CountingReader(0))
        .writer(lambda items: None)
        .listener(EmptyInput())
        .build()
    )
    script = Script()
    report, alert = script.step("report"), script.step("alert")
    registry.register(
        JobBuilder("feed")
        .flow(start=chunk, transitions={chunk: {"EMPTY": alert, "*": report}})
        .build()
    )
    execution = operator.start("feed", DAY)
    assert execution.status == BatchStatus.COMPLETED
    assert script.calls == ["alert"]
    assert steps_of(execution)["read"] == ("COMPLETED", "EMPTY")
    stored = operator.get_execution(execution.id)
    assert steps_of(stored)["read"] == ("COMPLETED", "EMPTY")


def test_a_straight_job_keeps_its_meaning_and_takes_its_last_steps_exit_status(
    operator: JobOperator, registry: JobRegistry
) -> None:
    script = Script(second="NOOP")
    registry.register(
        JobBuilder("line").step(script.step("first")).step(script.step("second")).build()
    )
    execution = operator.start("line", DAY)
    assert execution.status == BatchStatus.COMPLETED
    assert operator.get_execution(execution.id).exit_status == "NOOP"


def test_restart_follows_the_path_the_failed_execution_took(
    operator: JobOperator, registry: JobRegistry
) -> None:
    """classify COMPLETED with SPECIAL, routed to special (which failed). On restart classify
    is not run again, and its recorded SPECIAL routes to special again, not to normal; the
    decision after it is asked again."""
    script = Script(classify="SPECIAL", special=RuntimeError("ledger locked"))
    classify, normal, special, close = (
        script.step(n) for n in ("classify", "normal", "special", "close")
    )
    asked: list[int] = []

    def decide(execution: JobExecution, last: StepExecution | None) -> str:
        asked.append(execution.id)
        return "GO"

    gate = Decision("gate", decide)
    registry.register(
        JobBuilder("path")
        .flow(
            start=classify,
            transitions={
                classify: {"SPECIAL": gate, "*": normal},
                gate: {"GO": special},
                special: {"COMPLETED": close},
                normal: {"*": close},
            },
        )
        .build()
    )
    first = operator.start("path", DAY)
    assert first.status == BatchStatus.FAILED
    assert "step 'special' ended with exit status 'FAILED'" in (first.exit_message or "")
    assert "ledger locked" in (first.exit_message or "")

    script.calls.clear()
    script.outcomes.update(classify="OTHER", special=None)  # would now route to normal
    second = operator.restart("path")
    assert second.status == BatchStatus.COMPLETED
    assert script.calls == ["special", "close"]
    assert asked == [first.id, second.id]
    assert [s.step_name for s in second.step_executions] == ["special", "close"]


def test_stop_and_restart_stops_and_the_restart_begins_at_its_step(
    operator: JobOperator, registry: JobRegistry
) -> None:
    script = Script(load="HOLD", post=RuntimeError("not yet"))
    load, post, report = script.step("load"), script.step("post"), script.step("report")
    registry.register(
        JobBuilder("held")
        .flow(
            start=load,
            transitions={
                load: {"HOLD": stop_and_restart(post), "*": post},
                post: {"COMPLETED": report},
            },
        )
        .build()
    )
    first = operator.start("held", DAY)
    assert first.status == BatchStatus.STOPPED
    assert "a restart begins at 'post'" in (first.exit_message or "")
    assert script.calls == ["load"]

    failed = operator.restart("held")  # begins at post, which fails: the job FAILED
    assert failed.status == BatchStatus.FAILED
    assert script.calls == ["load", "post"]

    script.outcomes["post"] = None
    done = operator.restart("held")  # still begins at post, not at load's HOLD again
    assert done.status == BatchStatus.COMPLETED
    assert script.calls == ["load", "post", "post", "report"]


@pytest.mark.parametrize(
    ("transitions", "message"),
    [
        ({"a": {"*": "nowhere"}}, "'nowhere' names no step or decision"),
        ({"a": {"*": END}, "b": {"*": END}}, "no transition reaches 'b'"),
        ({"a": {"*": END}, 42: {"*": END}}, "42 is neither a step nor a decision"),
        ({"a": {"*": stop_and_restart("ghost")}}, "'ghost' names no step"),
    ],
)
def test_the_flow_is_checked_at_build(transitions: dict[Any, Any], message: str) -> None:
    script = Script()
    a, b = script.step("a"), script.step("b")
    resolved = {
        (a if key == "a" else b if key == "b" else key): value for key, value in transitions.items()
    }
    with pytest.raises(ValueError, match=message):
        JobBuilder("bad").flow(start=a, transitions=resolved).build()


def test_names_resolve_to_the_steps_of_the_flow(
    operator: JobOperator, registry: JobRegistry
) -> None:
    script = Script()
    a, b = script.step("a"), script.step("b")
    job = JobBuilder("named").flow(start="a", transitions={a: {"*": b}, "b": {"*": END}}).build()
    assert [step.name for step in job.steps] == ["a", "b"]
    registry.register(job)
    assert operator.start("named", DAY).status == BatchStatus.COMPLETED
    assert script.calls == ["a", "b"]
    assert job.describe()["flow"] == {"a": {"*": "b"}, "b": {"*": "END"}}
    with pytest.raises(ValueError, match="two different steps"):
        JobBuilder("twice").flow(start=a, transitions={a: {"*": Script().step("a")}}).build()
