"""Hostile and malformed parameters are refused before anything is written, and no failure
between creating an execution and running it leaves the execution running (SQLite and
PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from batchd import BatchStatus, JobOperator, JobRegistry, SqlJobRepository, StepContext, failpoints
from batchd.errors import InvalidJobParameters
from batchd.model.params import MAX_PARAMS_BYTES, MAX_PARAMS_DEPTH
from tests.support.jobs import operator_for, tasklet_job
from tests.test_operator import table_counts

ROOT = Path(__file__).resolve().parent.parent
TEN_MB = 10 * 1024 * 1024


def nested(levels: int) -> dict[str, Any]:
    """``{"a": {"a": ... {}}}``: an object ``levels`` deep (the outer object is level 1)."""
    inner: dict[str, Any] = {}
    for _ in range(levels - 1):
        inner = {"a": inner}
    return inner


class Measure(BaseModel):
    value: float


def note(ctx: StepContext) -> None:
    """Does nothing: the tests look at what the repository recorded."""


@pytest.fixture
def jobs(registry: JobRegistry) -> JobRegistry:
    registry.register(tasklet_job("plain", note, step="note"))
    registry.register(tasklet_job("measured", note, step="note", params_model=Measure))
    return registry


HOSTILE = [
    pytest.param(nested(600), "nests deeper than 32 levels", id="600-deep-object"),
    pytest.param(json.dumps(nested(600)), "nests deeper than 32 levels", id="600-deep-text"),
    pytest.param('{"x": "[' * 3000 + '"}', "nests deeper|not valid JSON", id="3000-deep-text"),
    pytest.param(
        {"x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
        "'x'",
        id="deep-list",
    ),
    pytest.param('{"x": NaN}', "NaN is not a JSON number", id="NaN-text"),
    pytest.param('{"x": Infinity}', "Infinity is not a JSON number", id="Infinity-text"),
    pytest.param('{"x": -Infinity}', "-Infinity is not a JSON number", id="-Infinity-text"),
    pytest.param('{"x": 1e999}', "'x' is inf", id="overflowing-number"),
    pytest.param({"x": float("nan")}, "'x' is nan", id="NaN"),
    pytest.param({"x": {"y": [float("-inf")]}}, "'x' is -inf", id="nested-Infinity"),
    pytest.param({"x": "y" * TEN_MB}, f"at most {MAX_PARAMS_BYTES}", id="10MB-string"),
    pytest.param({"x": list(range(TEN_MB // 8))}, f"at most {MAX_PARAMS_BYTES}", id="10MB-list"),
    pytest.param(json.dumps({"x": "y" * TEN_MB}), f"at most {MAX_PARAMS_BYTES}", id="10MB-text"),
    pytest.param(b'{"x": "\xff\xfe"}', "not UTF-8 text", id="non-UTF-8-bytes"),
    pytest.param({"x": "bad \udc80 text"}, "'x' contains a lone surrogate", id="surrogate"),
    pytest.param('{"x": "\\ud800"}', "'x' contains a lone surrogate", id="escaped-surrogate"),
    pytest.param({"\udc80": 1}, "names must be strings of Unicode text", id="surrogate-name"),
    pytest.param({"x": {"\udc80": 1}}, "in parameter 'x'", id="nested-surrogate-name"),
]


@pytest.mark.parametrize(("raw", "message"), HOSTILE)
def test_hostile_parameters_are_refused_before_anything_is_written(
    operator: JobOperator, repository: SqlJobRepository, jobs: JobRegistry, raw: Any, message: str
) -> None:
    before = table_counts(repository)
    for start in (operator.start, operator.start_async):
        with pytest.raises(InvalidJobParameters, match=message):
            start("plain", raw)
    assert table_counts(repository) == before
    assert operator.active_handles() == []


def test_the_bounds_themselves_are_accepted(
    operator: JobOperator, repository: SqlJobRepository, jobs: JobRegistry
) -> None:
    deepest = operator.start("plain", nested(MAX_PARAMS_DEPTH))
    assert deepest.status == BatchStatus.COMPLETED
    assert deepest.params == nested(MAX_PARAMS_DEPTH)
    # {"x":"yyy..."} is exactly the limit in canonical JSON (whatever the spacing given).
    biggest = {"x": "y" * (MAX_PARAMS_BYTES - len('{"x":""}'))}
    assert operator.start("plain", biggest).status == BatchStatus.COMPLETED
    with pytest.raises(InvalidJobParameters, match="bytes of JSON"):
        operator.start("plain", {"x": biggest["x"] + "y"})
    # A character outside the BMP is text like any other.
    assert operator.start("plain", {"x": "\U0001f600 ok"}).params == {"x": "\U0001f600 ok"}


def test_a_params_model_cannot_make_nan_either(
    operator: JobOperator, repository: SqlJobRepository, jobs: JobRegistry
) -> None:
    before = table_counts(repository)
    for text in ("nan", "inf", "-Infinity"):
        with pytest.raises(InvalidJobParameters, match="'value' is"):
            operator.start("measured", {"value": text})
    assert table_counts(repository) == before
    assert operator.start("measured", {"value": "2.5"}).params == {"value": 2.5}


# ------------------------------------------------------------ between creating and running


@pytest.fixture
def failing_after_create(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(failpoints.ENVIRONMENT_VARIABLE, "operator.after_create_execution=raise")
    failpoints.reload_from_environment()
    yield
    monkeypatch.delenv(failpoints.ENVIRONMENT_VARIABLE)
    failpoints.reload_from_environment()


def test_an_error_before_the_runner_has_the_execution_ends_it_failed(
    operator: JobOperator, jobs: JobRegistry, failing_after_create: None
) -> None:
    starts = [
        lambda: operator.start("plain", {"n": 1}),
        lambda: operator.start_async("plain", {"n": 1}),
        lambda: operator.restart("plain"),
        lambda: operator.restart_async("plain"),
    ]
    for start in starts:
        with pytest.raises(failpoints.FailpointHit):
            start()
        [newest] = operator.list_executions("plain", limit=1)
        assert newest.status == BatchStatus.FAILED
        assert newest.exit_message is not None
        assert newest.exit_message.startswith(
            "not started: FailpointHit: failpoint operator.after_create_execution"
        )
        assert newest.end_time is not None
        assert operator.active_handles() == []  # nothing keeps a heartbeat for it
    assert len(operator.list_executions("plain")) == len(starts)
    assert operator.recover(lease=1) == []  # nothing is left for recovery to find


def test_the_instance_runs_once_the_failure_is_gone(
    operator: JobOperator, jobs: JobRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(failpoints.ENVIRONMENT_VARIABLE, "operator.after_create_execution=raise")
    failpoints.reload_from_environment()
    try:
        with pytest.raises(failpoints.FailpointHit):
            operator.start_async("plain", {"n": 2})
    finally:
        monkeypatch.delenv(failpoints.ENVIRONMENT_VARIABLE)
        failpoints.reload_from_environment()
    done = operator.start("plain", {"n": 2})
    assert done.status == BatchStatus.COMPLETED
    assert [e.status for e in operator.list_executions("plain")] == [
        BatchStatus.COMPLETED,
        BatchStatus.FAILED,
    ]


def test_a_kill_after_creating_the_execution_is_repaired_by_recover(
    database_url: str, tmp_path: Path
) -> None:
    command = ["run", database_url, str(tmp_path), "slow_count", "{}"]
    child = subprocess.run(
        [sys.executable, "-m", "tests.support.child", *command],
        cwd=ROOT,
        env={**os.environ, failpoints.ENVIRONMENT_VARIABLE: "operator.after_create_execution=kill"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout == ""  # killed before start_async returned the execution
    operator = operator_for(database_url, heartbeat=0.2)
    try:
        [stuck] = operator.list_executions()
        assert stuck.status == BatchStatus.STARTING
        [recovered] = operator.recover(lease=1)
        assert recovered.id == stuck.id and recovered.status == BatchStatus.FAILED
        assert recovered.exit_message is not None and "process" in recovered.exit_message
    finally:
        operator.shutdown()
        operator.repository.dispose()
