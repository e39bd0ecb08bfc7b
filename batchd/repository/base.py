"""What the parts of the job repository share: the Engine, the clock, read connections and a
few SQL helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, CursorResult, Engine

from batchd.model import RUNNING_STATUSES
from batchd.repository.connect import MYSQL_BACKENDS, READ_ONLY_OPTION

Clock = Callable[[], datetime]
RUNNING = [s.value for s in RUNNING_STATUSES]


def utc_now() -> datetime:
    return datetime.now(UTC)


class RepositoryBase:
    """The database of a repository; :class:`SqlJobRepository` sets both attributes."""

    engine: Engine
    clock: Clock

    def reading(self) -> Connection:
        """A connection for reads only (on SQLite it never takes the write lock)."""
        return self.engine.connect().execution_options(**{READ_ONLY_OPTION: True})


def dialect_insert(conn: Connection) -> Any:
    """The INSERT construct with ON CONFLICT of the connection's database (the dialect
    module is imported on first use: a SQLite-only process never loads PostgreSQL's)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert
    if conn.dialect.name in MYSQL_BACKENDS:
        from batchd.repository.mysql_insert import MySQLInsert

        return MySQLInsert
    from sqlalchemy.dialects import sqlite

    return sqlite.insert


def batches(values: Sequence[int], size: int = 500) -> Iterator[list[int]]:
    """Slices of ``values`` small enough for an ``IN (...)`` on every database."""
    for begin in range(0, len(values), size):
        yield list(values[begin : begin + size])


def inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None, "an INSERT returns its primary key"
    return int(key[0])
