"""A processor that returns several items for one (fan_out=True): the writer receives them
flattened, counted as written items; an empty list filters. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, StepBuilder
from batchd.items import ListItemReader

ORDERS = [
    {"order": 1, "lines": ["apple", "pear"]},
    {"order": 2, "lines": []},
    {"order": 3, "lines": ["fig"]},
    {"order": 4, "lines": ["kiwi", "lime", "plum"]},
]


def order_lines(order: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"order": order["order"], "item": item} for item in order["lines"]]


def test_the_writer_gets_every_line_once_across_a_restart(
    operator: JobOperator, registry: JobRegistry
) -> None:
    written: list[list[str]] = []
    broken = {"once": True}

    def write(items: list[dict[str, Any]]) -> None:
        if broken["once"] and items[0]["order"] == 4:
            broken["once"] = False
            raise OSError("disk full")
        written.append([line["item"] for line in items])

    step = (
        StepBuilder("lines")
        .reader(ListItemReader(ORDERS))
        .processor(order_lines, fan_out=True)
        .writer(write)
        .chunk_size(3)
        .build()
    )
    registry.register(JobBuilder("orders").step(step).build())
    first = operator.start("orders", {})
    assert first.status == BatchStatus.FAILED
    counts = first.step_executions[0]
    assert (counts.read_count, counts.write_count, counts.filter_count) == (4, 3, 1)
    second = operator.restart("orders")
    assert second.status == BatchStatus.COMPLETED
    assert written == [["apple", "pear", "fig"], ["kiwi", "lime", "plum"]]
    counts = second.step_executions[0]
    assert (counts.read_count, counts.write_count, counts.filter_count) == (1, 3, 0)


def test_a_fan_out_processor_must_return_a_list(
    operator: JobOperator, registry: JobRegistry
) -> None:
    step = (
        StepBuilder("lines")
        .reader(ListItemReader(ORDERS))
        .processor(lambda order: order, fan_out=True)  # a dict, not a list of items
        .writer(lambda items: None)
        .build()
    )
    registry.register(JobBuilder("wrong").step(step).build())
    execution = operator.start("wrong", {})
    assert execution.status == BatchStatus.FAILED
    assert "(fan_out=True) must return a list of items, not dict" in (execution.exit_message or "")


@pytest.mark.parametrize("fan_out", [False])
def test_without_fan_out_a_list_is_one_item(
    operator: JobOperator, registry: JobRegistry, fan_out: bool
) -> None:
    written: list[Any] = []
    step = (
        StepBuilder("lines")
        .reader(ListItemReader(ORDERS[:1]))
        .processor(order_lines, fan_out=fan_out)
        .writer(written.extend)
        .build()
    )
    registry.register(JobBuilder("plain").step(step).build())
    assert operator.start("plain", {}).status == BatchStatus.COMPLETED
    assert written == [order_lines(ORDERS[0])]
