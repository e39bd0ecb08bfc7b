"""Automatic retries of failed executions (go-job's retries, Airflow's retries/retry_delay):
the daemon's retry pass with a real operator and repository, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from batchd import BatchStatus, JobBuilder, JobExecution, JobOperator, JobRegistry, StepBuilder
from batchd.daemon.metrics import Metrics
from batchd.daemon.retries import Retrier, RetryPolicy
from batchd.errors import PermanentError
from batchd.items import ListItemReader

NOW = timedelta(0)


class FailingWriter:
    """Fails when it sees item 7, the first ``times`` times (its copies share the count)."""

    def __init__(self, times: int) -> None:
        self.left = {"n": times}
        self.written: list[int] = []

    def write(self, items: list[int]) -> None:
        if 7 in items and self.left["n"] > 0:
            self.left["n"] -= 1
            raise OSError("ledger locked")
        self.written.extend(items)


def retry_until_quiet(retrier: Retrier, operator: JobOperator) -> list[JobExecution]:
    """Run the pass until it restarts nothing more; each retry is waited for."""
    done = []
    while True:
        retried, _ = retrier.run_once()
        if not retried:
            return done
        done += [operator.wait(r.id, timeout=60) for r in retried]


def job_with(writer: Any, name: str = "post") -> Any:
    step = (
        StepBuilder("post").reader(ListItemReader(list(range(1, 11)))).writer(writer).chunk_size(3)
    )
    return JobBuilder(name).step(step.build()).build()


def test_a_failed_execution_is_retried_from_its_last_commit_until_it_completes(
    operator: JobOperator, registry: JobRegistry
) -> None:
    writer = FailingWriter(times=2)
    registry.register(job_with(writer))
    seen: list[tuple[int, int]] = []
    metrics = Metrics(operator.repository)

    def on_retry(failed: JobExecution, retry: JobExecution) -> None:
        seen.append((failed.id, retry.id))
        metrics.on_retry(failed, retry)

    retrier = Retrier(
        operator, lambda: {"post": RetryPolicy(retries=3, delay=NOW)}, on_retry=on_retry
    )
    first = operator.start("post", {"day": 1})
    assert (first.status, first.attempt) == (BatchStatus.FAILED, 1)
    retries = retry_until_quiet(retrier, operator)
    assert [(r.status, r.attempt) for r in retries] == [
        (BatchStatus.FAILED, 2),
        (BatchStatus.COMPLETED, 3),
    ]
    assert seen == [(first.id, retries[0].id), (retries[0].id, retries[1].id)]
    assert writer.written == list(range(1, 11))  # items 1..6 were committed once, before
    assert retries[1].step_executions[0].read_count == 4
    assert metrics.registry.get_sample_value("batchd_job_retries_total", {"job": "post"}) == 2


def test_retries_are_spent_and_permanent_errors_are_not_retried(
    operator: JobOperator, registry: JobRegistry
) -> None:
    class BadInput(Exception):
        pass

    registry.register(job_with(FailingWriter(times=99), "always"))

    def reject(ctx: Any) -> None:
        raise BadInput("the file is for another bank")

    def refuse(ctx: Any) -> None:
        raise PermanentError("account closed")

    for name, tasklet in [("reject", reject), ("refuse", refuse)]:
        step = StepBuilder("check").tasklet(tasklet).build()
        registry.register(JobBuilder(name).step(step).permanent_errors(BadInput).build())
    retrier = Retrier(
        operator, lambda: dict.fromkeys(registry.names(), RetryPolicy(retries=2, delay=NOW))
    )
    for name in ("always", "reject", "refuse"):
        operator.start(name, {})
    retries = retry_until_quiet(retrier, operator)
    assert [(r.job_name, r.attempt) for r in retries] == [("always", 2), ("always", 3)]
    executions = operator.list_executions()
    assert {e.job_name: e.exit_status for e in executions if e.job_name != "always"} == {
        "reject": "FAILED_PERMANENT",
        "refuse": "FAILED_PERMANENT",
    }
    assert all(e.status == BatchStatus.FAILED for e in executions)


def test_the_backoff_is_exponential_with_a_cap_and_a_retry_waits_for_it(
    operator: JobOperator, registry: JobRegistry
) -> None:
    policy = RetryPolicy(retries=5, delay=timedelta(minutes=5), max_delay=timedelta(minutes=20))
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [
        timedelta(minutes=m) for m in (5, 10, 20, 20)
    ]
    registry.register(job_with(FailingWriter(times=1)))
    operator.start("post", {})
    retrier = Retrier(operator, lambda: {"post": policy}, poll=30)
    retried, wait = retrier.run_once()
    assert retried == []
    assert wait == 30  # due in about five minutes: look again at the next poll
    assert operator.list_executions()[0].attempt == 1


@pytest.mark.parametrize("retries", [0])
def test_a_job_without_retries_is_left_alone(
    operator: JobOperator, registry: JobRegistry, retries: int
) -> None:
    registry.register(job_with(FailingWriter(times=1)))
    operator.start("post", {})
    retrier = Retrier(operator, lambda: {"post": RetryPolicy(retries=retries, delay=NOW)})
    assert retrier.run_once()[0] == []
