"""The web console's view of the repository: a connection that cannot write, and the few
indexed queries its pages make.

The console opens the database on its own read-only path, never through
:class:`~batchd.repository.SqlJobRepository` (which creates and upgrades the schema): SQLite
with ``mode=ro`` and ``PRAGMA query_only``, PostgreSQL with ``default_transaction_read_only``.
A bug in a page can then at worst fail to show something; it cannot change a run.

Every query is bounded by an index, so that a page costs the same with 100,000 executions
as with 100: the primary key for the newest executions and one execution, the
``(job_name, status)`` index for a job's last completed run, the partial index of running
executions, and the unique keys of fires and files per schedule and watch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    String,
    Table,
    cast,
    create_engine,
    event,
    func,
    select,
    text,
    type_coerce,
)
from sqlalchemy.engine import URL

from batchd.model import JobExecution, StepExecution
from batchd.repository.base import batches
from batchd.repository.connect import SQLITE_BUSY_TIMEOUT_MS, parse_database_url
from batchd.repository.nodes import NodeRecord, node_records
from batchd.repository.rows import to_job_execution, to_step_execution
from batchd.repository.tables import (
    RUNNING_SQL,
    job_execution,
    schedule_fire,
    step_execution,
    trigger_file,
)

#: The overview reads the newest executions a page of GRID_PAGE ids at a time, newest first,
#: until a page adds nothing to the dates it shows, and GRID_WINDOW of them at most: a
#: bounded cost whatever the history, enough for 14 business dates of a few hundred jobs.
GRID_PAGE = 1000
GRID_WINDOW = 5000

# Columns of an execution the overview needs (not its checkpoints).
_CELL_COLUMNS = (
    job_execution.c.id,
    job_execution.c.job_name,
    job_execution.c.params,
    job_execution.c.status,
    job_execution.c.exit_message,
    job_execution.c.create_time,
    job_execution.c.start_time,
    job_execution.c.end_time,
)


def read_only_engine(url: str | URL) -> Engine:
    """An Engine on the repository's database through which nothing can be written."""
    parsed = parse_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:":
            raise ValueError("the web console needs the repository's SQLite file")

        def connect() -> sqlite3.Connection:
            # mode=ro: the file is opened read-only by SQLite itself, whatever the SQL says.
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
            )
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only = ON")
            return conn

        return create_engine("sqlite://", creator=connect)
    engine = create_engine(parsed)

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET default_transaction_read_only = on")
        dbapi_connection.autocommit = autocommit

    return engine


@dataclass(frozen=True)
class Cell:
    """An execution as the overview shows it."""

    id: int
    job: str
    params: str
    status: str
    exit_message: str | None
    create_time: Any
    start_time: Any
    end_time: Any

    @classmethod
    def of(cls, row: RowMapping) -> Cell:
        return cls(**{key: row[column] for key, column in _CELL_KEYS})


_CELL_KEYS = (
    ("id", "id"),
    ("job", "job_name"),
    ("params", "params"),
    ("status", "status"),
    ("exit_message", "exit_message"),
    ("create_time", "create_time"),
    ("start_time", "start_time"),
    ("end_time", "end_time"),
)


class ReadOnlyStore:
    """The queries of the web console's pages, on a read-only Engine."""

    def __init__(self, url: str | URL) -> None:
        self.engine = read_only_engine(url)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    # ----------------------------------------------------------------- overview

    def grid_query(self, below: int, count: int) -> Any:
        """The executions of the ``count`` ids up to ``below``, newest first: a range of
        the primary key. Only what places and colours a cell: the ``date`` parameter (read
        from the JSON by the database) and the creation time as stored (converted only for
        the executions without a date)."""
        if self.engine.dialect.name == "postgresql":
            day = func.json_extract_path_text(cast(job_execution.c.params, JSON), "date")
        else:
            day = func.json_extract(job_execution.c.params, "$.date")
        return (
            select(
                job_execution.c.id,
                job_execution.c.job_name,
                day.label("date"),
                job_execution.c.status,
                type_coerce(job_execution.c.create_time, String).label("create_time"),
            )
            .where(job_execution.c.id > below - count, job_execution.c.id <= below)
            .order_by(job_execution.c.id.desc())
        )

    @staticmethod
    def newest_id(conn: Connection) -> int:
        return conn.execute(select(func.max(job_execution.c.id))).scalar_one_or_none() or 0

    def grid_rows(self, conn: Connection, below: int, count: int = GRID_PAGE) -> Sequence[Any]:
        """(id, job, date parameter, status, creation time as stored) of the executions of
        the ``count`` ids up to ``below``, newest first."""
        sql = str(
            self.grid_query(below, count).compile(conn, compile_kwargs={"literal_binds": True})
        )
        # Thousands of rows: the driver's tuples, without a Row object made for each one.
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql)
            return cursor.fetchall()
        finally:
            cursor.close()

    @staticmethod
    def cells(conn: Connection, ids: list[int]) -> dict[int, Cell]:
        """The executions of ``ids`` (by primary key)."""
        found: dict[int, Cell] = {}
        for part in batches(ids):
            query = select(*_CELL_COLUMNS).where(job_execution.c.id.in_(part))
            found.update((row["id"], Cell.of(row)) for row in conn.execute(query).mappings())
        return found

    @staticmethod
    def job_names_query() -> Any:
        """Every job the repository has an instance of, one index lookup per job (a loose
        index scan: the instances may number as many as the executions)."""
        return text(
            "WITH RECURSIVE names(name) AS ("
            " SELECT min(job_name) FROM batch_job_instance"
            " UNION ALL"
            " SELECT (SELECT min(job_name) FROM batch_job_instance WHERE job_name > names.name)"
            " FROM names WHERE names.name IS NOT NULL)"
            " SELECT name FROM names WHERE name IS NOT NULL"
        )

    def job_names(self, conn: Connection) -> list[str]:
        return list(conn.execute(self.job_names_query()).scalars())

    @staticmethod
    def running_query() -> Any:
        # The condition is the partial index's own, so that the database uses that index;
        # sorted here, not by the database (which would rather scan the table in id order).
        return select(*_CELL_COLUMNS).where(text(RUNNING_SQL))

    def running(self, conn: Connection) -> list[Cell]:
        cells = [Cell.of(row) for row in conn.execute(self.running_query()).mappings()]
        return sorted(cells, key=lambda cell: cell.id)

    # ---------------------------------------------------------------- execution

    @staticmethod
    def execution(conn: Connection, execution_id: int) -> JobExecution | None:
        row = (
            conn.execute(select(job_execution).where(job_execution.c.id == execution_id))
            .mappings()
            .first()
        )
        if row is None:
            return None
        steps = conn.execute(
            select(step_execution)
            .where(step_execution.c.job_execution_id == execution_id)
            .order_by(step_execution.c.id)
        ).mappings()
        return to_job_execution(row, [to_step_execution(step) for step in steps])

    @staticmethod
    def previous_completed(conn: Connection, job: str, before: int) -> list[StepExecution]:
        """The steps of the job's newest COMPLETED execution before ``before`` (what a
        running step may be measured against), or []."""
        previous = conn.execute(
            select(job_execution.c.id)
            .where(
                job_execution.c.job_name == job,
                job_execution.c.status == "COMPLETED",
                job_execution.c.id < before,
            )
            .order_by(job_execution.c.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        if previous is None:
            return []
        rows = conn.execute(
            select(step_execution).where(step_execution.c.job_execution_id == previous)
        ).mappings()
        return [to_step_execution(row) for row in rows]

    @staticmethod
    def trigger_of(conn: Connection, execution_id: int) -> dict[str, Any] | None:
        """The schedule fire or the file that started the execution, if any."""
        fire = (
            conn.execute(
                select(schedule_fire.c.schedule_name, schedule_fire.c.fire_time).where(
                    schedule_fire.c.job_execution_id == execution_id
                )
            )
            .mappings()
            .first()
        )
        if fire is not None:
            return {"kind": "schedule", "name": fire["schedule_name"], "at": fire["fire_time"]}
        file = (
            conn.execute(
                select(
                    trigger_file.c.watch_name, trigger_file.c.file_name, trigger_file.c.claimed_at
                ).where(trigger_file.c.job_execution_id == execution_id)
            )
            .mappings()
            .first()
        )
        if file is not None:
            return {
                "kind": "watch",
                "name": file["watch_name"],
                "file": file["file_name"],
                "at": file["claimed_at"],
            }
        return None

    # ---------------------------------------------------------- schedules, watches

    @staticmethod
    def recent_fires(conn: Connection, schedule: str, limit: int) -> list[RowMapping]:
        """The schedule's newest fires (its unique key's range), with the status of the
        execution each started."""
        by_schedule = schedule_fire.c.schedule_name == schedule
        return _recent(conn, schedule_fire, by_schedule, schedule_fire.c.fire_time, limit)

    @staticmethod
    def waiting_fires(conn: Connection) -> list[RowMapping]:
        query = (
            select(schedule_fire)
            .where(schedule_fire.c.outcome == "waiting")
            .order_by(schedule_fire.c.fire_time)
        )
        return list(conn.execute(query).mappings())

    @staticmethod
    def recent_files(conn: Connection, watch: str, limit: int) -> list[RowMapping]:
        """The watch's newest files, with the status of the execution each started."""
        by_watch = trigger_file.c.watch_name == watch
        return _recent(conn, trigger_file, by_watch, trigger_file.c.id, limit)

    @staticmethod
    def nodes(conn: Connection) -> list[NodeRecord]:
        return node_records(conn)

    def explain(self, query: Any) -> list[str]:
        """The database's plan for ``query`` (one line per step), for the tests that check
        the pages' queries use the indexes."""
        with self.reading() as conn:
            compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
            # (a text() query compiles to itself)
            if conn.dialect.name == "sqlite":
                rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
                return [str(row[-1]) for row in rows]
            return [str(row[0]) for row in conn.exec_driver_sql(f"EXPLAIN {compiled}").all()]


def _recent(
    conn: Connection, trigger: Table, where: ColumnElement[bool], newest: Column[Any], limit: int
) -> list[RowMapping]:
    """The newest ``limit`` rows of a trigger table (a schedule's fires, a watch's files)
    that match ``where``, newest first by ``newest``, each with the status of the execution
    it started (``execution_status``)."""
    query = (
        select(trigger, job_execution.c.status.label("execution_status"))
        .outerjoin(job_execution, job_execution.c.id == trigger.c.job_execution_id)
        .where(where)
        .order_by(newest.desc())
        .limit(limit)
    )
    return list(conn.execute(query).mappings())


__all__ = ["GRID_PAGE", "GRID_WINDOW", "Cell", "ReadOnlyStore", "read_only_engine"]
