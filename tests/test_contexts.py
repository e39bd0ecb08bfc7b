"""Chunk steps and listeners read and write job_context and step_context, kept as a tasklet's
are: the job context with the execution (restored on restart), the step context per instance
and step (at step end, whatever the outcome). On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from batchd import (
    BatchStatus,
    ChunkContext,
    ExecutionContext,
    JobBuilder,
    JobOperator,
    JobRegistry,
    StepBuilder,
    StepContext,
    StepExecution,
)
from batchd.items import ListItemReader


class TotalWriter:
    """Adds what it writes to the job context; counts its runs in its step context."""

    def open(self, ctx: ExecutionContext) -> None:
        self.ctx = ctx
        ctx.step_context["runs"] = ctx.step_context.get("runs", 0) + 1

    def write(self, items: list[int]) -> None:
        self.ctx.job_context["total"] = self.ctx.job_context.get("total", 0) + sum(items)


class Listener:
    def after_chunk(self, chunk: ChunkContext) -> None:
        chunk.job_context["chunks"] = chunk.job_context.get("chunks", 0) + 1
        chunk.step_context["last_chunk"] = chunk.items

    def after_step(self, step_execution: StepExecution) -> None:
        if step_execution.step_name == "sum":
            step_execution.job_context["seen_by_listener"] = step_execution.step_context["runs"]


def test_chunk_steps_and_listeners_share_the_contexts_with_tasklets(
    operator: JobOperator, registry: JobRegistry
) -> None:
    seen: list[dict[str, Any]] = []
    failing = {"now": True}

    def report(ctx: StepContext) -> None:
        seen.append(dict(ctx.job_context))
        if failing["now"]:
            raise RuntimeError("printer jammed")

    registry.register(
        JobBuilder("ctx")
        .step(
            StepBuilder("sum")
            .reader(ListItemReader([1, 2, 3, 4, 5]))
            .writer(TotalWriter())
            .chunk_size(2)
            .build()
        )
        .step(StepBuilder("report").tasklet(report).build())
        .listener(Listener())
        .build()
    )
    first = operator.start("ctx", {"day": 1})
    assert first.status == BatchStatus.FAILED
    expected = {"total": 15, "chunks": 3, "seen_by_listener": 1}
    assert seen == [expected]
    failing["now"] = False
    assert operator.restart("ctx").status == BatchStatus.COMPLETED
    assert seen[1] == expected  # restored from the failed execution, the sum not run again
    step_context = operator.repository.load_step_context(first.instance_id, "sum")
    assert step_context == {"runs": 1, "last_chunk": [5]}
