"""Starting a job again with the next run id (Spring's JobParametersIncrementer), on SQLite
and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, StepBuilder, StepContext
from batchd.errors import InvalidJobParameters

seen: list[Any] = []


def remember(ctx: StepContext) -> None:
    seen.append(ctx.params)


def job(name: str) -> JobBuilder:
    return JobBuilder(name).step(StepBuilder("work").tasklet(remember).build())


def test_start_next_starts_a_new_instance_with_the_next_run_id(
    operator: JobOperator, registry: JobRegistry
) -> None:
    registry.register(job("report").incrementer().build())
    first = operator.start_next("report", {"region": "eu"})
    second = operator.start_next("report", {"region": "eu"})
    assert (first.status, second.status) == (BatchStatus.COMPLETED, BatchStatus.COMPLETED)
    assert first.params == {"region": "eu", "run_id": 1}
    assert second.params == {"region": "eu", "run_id": 2}
    assert first.instance_id != second.instance_id
    waited = operator.wait(operator.start_next_async("report").id, timeout=30)
    assert waited.params == {"run_id": 3}


def test_a_custom_incrementer_and_a_params_model_that_declares_the_run_id(
    operator: JobOperator, registry: JobRegistry
) -> None:
    class Params(BaseModel):
        run_id: int = 0
        batch: str = "daily"

    def by_ten(previous: dict[str, Any] | None) -> dict[str, Any]:
        return {"run_id": (previous or {}).get("run_id", 0) + 10}

    registry.register(job("tens").params_model(Params).incrementer(by_ten).build())
    assert operator.start_next("tens").params == {"batch": "daily", "run_id": 10}
    assert operator.start_next("tens").params == {"batch": "daily", "run_id": 20}


def test_start_next_refuses_a_job_without_incrementer_or_a_model_that_drops_the_run_id(
    operator: JobOperator, registry: JobRegistry
) -> None:
    class Dropping(BaseModel):
        batch: str = "daily"

    registry.register(job("plain").build())
    registry.register(job("dropping").params_model(Dropping).incrementer().build())
    with pytest.raises(InvalidJobParameters, match="has no incrementer"):
        operator.start_next("plain")
    # The model would drop the incrementer's run_id: refused as any dropped parameter is.
    with pytest.raises(InvalidJobParameters, match=r"run_id: no such parameter \(Dropping"):
        operator.start_next("dropping")
    assert operator.list_executions() == []
    with pytest.raises(ValueError, match="run_id identifies"):
        job("bad").non_identifying("run_id").incrementer().build()
