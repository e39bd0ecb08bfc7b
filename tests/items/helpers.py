"""Helpers for driving readers and writers the way the engine does (open, chunks, update,
complete, close), for persisting an ExecutionContext as the repository would (JSON), and
for a database holding a test table."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Table, create_engine, insert
from sqlalchemy.engine import Engine

from batchd.model import ExecutionContext


@contextmanager
def filled(url: str, table: Table, rows: list[dict[str, Any]]) -> Iterator[Engine]:
    """An engine on ``url`` where every table of ``table``'s metadata exists and ``table``
    holds ``rows``; disposed of at the end."""
    engine = create_engine(url)
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    yield engine
    engine.dispose()


def make_ctx(
    data: dict[str, Any] | None = None,
    *,
    params: Any = None,
    partition: dict[str, Any] | None = None,
) -> ExecutionContext:
    return ExecutionContext(data, params=params, partition=partition)


def persisted(ctx: ExecutionContext) -> ExecutionContext:
    """What a restart gets back: the checkpoint through JSON, same params and partition."""
    return ExecutionContext(
        json.loads(json.dumps(dict(ctx))), params=ctx.params, partition=ctx.partition
    )


def run_writer(
    writer: Any, chunks: Iterable[list[Any]], ctx: ExecutionContext | None = None
) -> ExecutionContext:
    """A whole step: a copy of ``writer`` opened, one write+update per chunk, complete."""
    ctx = ctx if ctx is not None else make_ctx()
    w = copy.copy(writer)
    w.open(ctx)
    try:
        for chunk in chunks:
            w.write(chunk)
            w.update(ctx)
        w.complete(ctx)
    finally:
        w.close()
    return ctx


def read_all(reader: Any, ctx: ExecutionContext | None = None) -> list[Any]:
    r = copy.copy(reader)
    r.open(ctx if ctx is not None else make_ctx())
    try:
        items = []
        while (item := r.read()) is not None:
            items.append(item)
        return items
    finally:
        r.close()


def read_n(reader: Any, n: int) -> list[Any]:
    items = []
    for _ in range(n):
        item = reader.read()
        assert item is not None
        items.append(item)
    return items
