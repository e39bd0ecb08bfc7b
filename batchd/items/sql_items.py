"""Relational databases through SQLAlchemy: a keyset-paginated reader and a writer that joins
the chunk's transaction when it targets the job repository's own database."""

from __future__ import annotations

import base64
import operator
import os
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import MetaData, Table, bindparam, create_engine, func, insert, select
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select

from batchd.errors import ItemFormatError
from batchd.items.base import ItemReader, ItemStream, ItemWriter
from batchd.items.convert import convert_value, item_to_dict
from batchd.items.progress import Progress
from batchd.model import ChunkTransaction, ExecutionContext, current_chunk_transaction
from batchd.model import database_identity as _database_identity

# One Engine per URL and process: copies of a reader/writer (one per execution or
# partition) share its connection pool; after a fork the child makes its own.
_ENGINES: dict[tuple[int, str], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(url: str) -> Engine:
    """The process's shared Engine for ``url``, created on first use."""
    key = (os.getpid(), url)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = create_engine(url)
            _ENGINES[key] = engine
        return engine


def dispose_engines() -> None:
    """Close the pools of the Engines created for URLs (tests, shutdown)."""
    with _ENGINES_LOCK:
        engines = [e for (pid, _), e in _ENGINES.items() if pid == os.getpid()]
        _ENGINES.clear()
    for engine in engines:
        engine.dispose()


class _SqlStream(ItemStream):
    """Holds a URL (the Engine comes from :func:`engine_for` in ``open()``) or a user's
    Engine. A pickled copy carries the Engine's URL instead, since an Engine does not pickle
    (give a URL for process executors when the Engine has settings of its own)."""

    def __init__(self, url_or_engine: str | URL | Engine, name: str | None) -> None:
        super().__init__(name)
        if isinstance(url_or_engine, Engine):
            self.url: str = url_or_engine.url.render_as_string(hide_password=False)
            self._user_engine: Engine | None = url_or_engine
        elif isinstance(url_or_engine, str | URL):
            self.url = (
                url_or_engine.render_as_string(hide_password=False)
                if isinstance(url_or_engine, URL)
                else url_or_engine
            )
            self._user_engine = None
        else:
            raise TypeError(f"expected a database URL or an Engine, not {url_or_engine!r}")
        self._engine: Engine | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_user_engine"] = None
        state["_engine"] = None
        return state

    def _connect_engine(self) -> Engine:
        engine = self._user_engine or engine_for(self.url)
        self._engine = engine
        return engine

    def _joined(self) -> ChunkTransaction | None:
        """The chunk's transaction when it is on this object's database, else None."""
        tx = current_chunk_transaction.get()
        if tx is None or self._engine is None:
            return None
        # The identity is asked of the database (once per Engine), and only when there is
        # a chunk transaction of another Engine to compare with.
        if tx.engine is self._engine or tx.database_id == _database_identity(self._engine):
            return tx
        return None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError(f"{self.name} is not open: call open(ctx) first")
        return self._engine


# Dialects whose page reads run in autocommit mode (see SqlItemReader._connection). Not
# SQLite: pysqlite does not BEGIN before a SELECT anyway, so there is nothing to save.
_AUTOCOMMIT_READS = frozenset({"postgresql"})


# -------------------------------------------------------------------------- keys in the context
def encode_key(value: Any) -> Any:
    """A key value in JSON-serialisable form (for the ExecutionContext)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, time):
        return {"$time": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot save a key of type {type(value).__name__} in the checkpoint")


def decode_key(value: Any) -> Any:
    """The inverse of :func:`encode_key`."""
    if not isinstance(value, dict) or len(value) != 1:
        return value
    ((tag, text),) = value.items()
    decoders: dict[str, Any] = {
        "$datetime": datetime.fromisoformat,
        "$date": date.fromisoformat,
        "$time": time.fromisoformat,
        "$decimal": Decimal,
        "$uuid": uuid.UUID,
        "$bytes": base64.b64decode,
    }
    return decoders[tag](text) if tag in decoders else value


def _key_value(value: Any, column: Any) -> Any:
    """A bound from a partition context (JSON: a date arrives as text) as the column's type."""
    value = decode_key(value)
    try:
        python_type = column.type.python_type
    except (AttributeError, NotImplementedError):
        return value
    if isinstance(value, str) and python_type is not str:
        try:
            return convert_value(value, python_type)
        except ValueError:
            return value
    return value


# -------------------------------------------------------------------------------------- reader
class SqlItemReader(_SqlStream, ItemReader):
    """Reads the rows of a query as dicts, page by page, with keyset pagination.

    ``select`` is a SQLAlchemy ``Select`` (or a ``Table``); ``key`` names one of its columns
    that is unique and ordered (the primary key, typically). Each page is
    ``select.where(key > last_key).order_by(key).limit(page_size)`` — never OFFSET, so every
    page costs the same and rows inserted behind the reader do not shift it. Each page is
    read in a short transaction of its own (none is held across chunks; on PostgreSQL an
    autocommit SELECT, without BEGIN and ROLLBACK), or on the chunk's connection when the
    engine has one open on the same database.

    Restart: ExecutionContext key ``<name>.last_key``, the key of the last item handed out
    by ``read()`` (not the last fetched); ``open(ctx)`` resumes after it. In a partition,
    ``ctx.partition`` ``{"start": a, "end": b}`` restricts the keys to ``a <= key <= b``.
    ``url_or_engine`` is a URL (the Engine is created in ``open()``, one per URL and
    process) or an Engine.
    """

    _runtime: tuple[str, ...] = ("_engine", "_buffer", "_query", "_next_query", "_progress")

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        select: Select[Any] | Table,
        *,
        key: str,
        page_size: int = 1000,
        name: str | None = None,
    ) -> None:
        super().__init__(url_or_engine, name)
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        self.select = select
        self.key_name = key
        self.page_size = page_size
        self._buffer: deque[dict[str, Any]] | None = None
        self._query: Select[Any] | None = None  # the first page
        self._next_query: Select[Any] | None = None  # the pages after a key (_AFTER_KEY)
        self._exhausted = False
        self._positioned = False  # whether _last_key holds a position to save
        self._last_key: Any = None  # key of the last item handed out (or the saved one)
        self._fetched = False  # whether _fetched_key bounds the next page
        self._fetched_key: Any = None  # key of the last row fetched
        self._progress: Progress | None = None

    def open(self, ctx: ExecutionContext) -> None:
        self._connect_engine()
        query = self.select if isinstance(self.select, Select) else select(self.select)
        try:
            key_column = query.selected_columns[self.key_name]
        except KeyError:
            names = ", ".join(c.key for c in query.selected_columns if c.key)
            raise ValueError(
                f"{self.name}: key {self.key_name!r} is not a column of the query ({names})"
            ) from None
        partition = ctx.partition or {}
        if "start" in partition:
            query = query.where(key_column >= _key_value(partition["start"], key_column))
        if "end" in partition:
            query = query.where(key_column <= _key_value(partition["end"], key_column))
        self._query = query.order_by(None).order_by(key_column).limit(self.page_size)
        # Built once, with the last key as a parameter: building the WHERE clause for each
        # page cost more than the rest of the page's Python.
        self._next_query = self._query.where(key_column > bindparam(_AFTER_KEY))
        saved = ctx.get(self.key("last_key"), _MISSING)
        self._positioned = self._fetched = saved is not _MISSING
        self._last_key = self._fetched_key = decode_key(saved) if self._positioned else None
        self._buffer = deque()
        self._exhausted = False
        self._progress = Progress("items", self.total(ctx), int(ctx.get(self.key("done"), 0)))

    def total(self, ctx: ExecutionContext) -> int | None:
        """The rows of the query (in a partition, of its key range): one COUNT at open."""
        if self._query is None:
            return None
        rows = self._query.limit(None).order_by(None).subquery()
        counted = select(func.count()).select_from(rows)
        with self._connection() as connection:
            return int(connection.execute(counted).scalar_one())

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        tx = self._joined()
        if tx is not None:
            yield tx.connection
            return
        with self.engine.connect() as connection:
            if connection.dialect.name in _AUTOCOMMIT_READS:
                # A page is one SELECT, which is a transaction of its own in autocommit mode
                # (same snapshot rules as BEGIN; SELECT; ROLLBACK) without the round trips
                # of BEGIN and ROLLBACK. The pool resets the connection when it comes back.
                connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection  # leaving ends the read (a rollback without autocommit)

    def _fetch(self, buffer: deque[dict[str, Any]]) -> None:
        if self._query is None or self._next_query is None:
            raise RuntimeError(f"{self.name} is not open: call open(ctx) first")
        with self._connection() as connection:
            if self._fetched:
                page = connection.execute(self._next_query, {_AFTER_KEY: self._fetched_key})
            else:
                page = connection.execute(self._query)
            rows = page.all()
        if len(rows) < self.page_size:
            self._exhausted = True
        buffer.extend(row._asdict() for row in rows)
        if rows:
            self._fetched_key = rows[-1]._mapping[self.key_name]
            self._fetched = True

    def read(self) -> dict[str, Any] | None:
        buffer = self._buffer
        if buffer is None:
            raise RuntimeError(f"{self.name} is not open: call open(ctx) first")
        if not buffer and not self._exhausted:
            self._fetch(buffer)
        if not buffer:
            return None
        item = buffer.popleft()
        self._last_key = item[self.key_name]
        self._positioned = True
        if self._progress is not None:
            self._progress.done += 1
        return item

    def update(self, ctx: ExecutionContext) -> None:
        if self._positioned:
            ctx[self.key("last_key")] = encode_key(self._last_key)
            if self._progress is not None:
                ctx[self.key("done")] = self._progress.done
                self._progress.save(ctx)

    def close(self) -> None:
        self._buffer = None
        self._query = None
        self._next_query = None


_MISSING = object()
# Name of the parameter that holds the last key fetched, in the queries of the later pages.
_AFTER_KEY = "batchd_after_key"


# -------------------------------------------------------------------------------------- writer
class SqlItemWriter(_SqlStream, ItemWriter):
    """Inserts items (dicts, pydantic models, dataclasses) into a table, one executemany
    INSERT per ``write()``; with ``upsert_on=[columns]`` an upsert on those columns
    (``INSERT ... ON CONFLICT (...) DO UPDATE`` on PostgreSQL and SQLite, ``ON DUPLICATE KEY
    UPDATE`` on MySQL/MariaDB).

    Transactions: when the engine has a chunk transaction open on the same database
    (``batchd.model.current_chunk_transaction``: the same Engine, or the same database as
    the database itself tells, e.g. the job repository's own), the rows are written on that
    connection and not committed here: the engine commits them with the checkpoint, so
    each item is written exactly once, even across a crash and a restart. On SQLite this
    is required, not an optimisation (a second connection would wait on the file lock the
    chunk holds). Otherwise the rows are written and committed in a transaction of their
    own just before the checkpoint commits: **at-least-once** — after a crash between the
    two, a restart writes the chunk again (use ``upsert_on`` to make that harmless).

    ``table`` is a ``Table`` or a table name (reflected in ``open()``; ``schema=`` for a
    schema). The writer keeps nothing in the ExecutionContext.
    """

    _runtime: tuple[str, ...] = ("_engine", "_table", "_plans")

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        table: Table | str,
        *,
        upsert_on: Sequence[str] | None = None,
        schema: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(url_or_engine, name)
        self.table = table
        self.schema = schema
        self.upsert_on = list(upsert_on) if upsert_on else None
        self._table: Table | None = table if isinstance(table, Table) else None
        self._plans: dict[tuple[str, tuple[str, ...]], _InsertPlan] = {}

    def open(self, ctx: ExecutionContext) -> None:
        engine = self._connect_engine()
        self._plans = {}
        if isinstance(self.table, Table):
            table = self.table
        else:
            table = Table(self.table, MetaData(), schema=self.schema, autoload_with=engine)
        if self.upsert_on:
            unknown = [c for c in self.upsert_on if c not in table.c]
            if unknown:
                raise ValueError(f"{self.name}: upsert_on names unknown column {unknown[0]!r}")
            if engine.dialect.name not in ("postgresql", "sqlite", "mysql", "mariadb"):
                raise ValueError(f"{self.name}: upsert is not supported on {engine.dialect.name}")
        self._table = table

    def _statement(self, table: Table, keys: tuple[str, ...]) -> Any:
        if not self.upsert_on:
            return insert(table)
        updates = [k for k in keys if k not in self.upsert_on]
        dialect = self.engine.dialect.name
        if dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            my_stmt = mysql_insert(table)
            if not updates:  # MySQL has no DO NOTHING: set a key column to itself
                return my_stmt.on_duplicate_key_update(
                    {self.upsert_on[0]: table.c[self.upsert_on[0]]}
                )
            return my_stmt.on_duplicate_key_update({k: my_stmt.inserted[k] for k in updates})
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            pg_stmt = pg_insert(table)
            if not updates:
                return pg_stmt.on_conflict_do_nothing(index_elements=self.upsert_on)
            return pg_stmt.on_conflict_do_update(
                index_elements=self.upsert_on, set_={k: pg_stmt.excluded[k] for k in updates}
            )
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite_stmt = sqlite_insert(table)
        if not updates:
            return lite_stmt.on_conflict_do_nothing(index_elements=self.upsert_on)
        return lite_stmt.on_conflict_do_update(
            index_elements=self.upsert_on, set_={k: lite_stmt.excluded[k] for k in updates}
        )

    def _same_length(self, table: Table, items: list[Any]) -> tuple[str, ...] | None:
        """The first item's keys when the chunk is plain dicts that each have as many keys
        as it, all columns of ``table`` (the usual chunk), found with C-level passes; else
        None. Whether each item has these very keys is left to the plan's lookups of them
        (``_InsertPlan.execute`` with ``checked=False``)."""
        first = items[0]
        if type(first) is not dict or set(map(type, items)) != {dict}:
            return None
        if not set(first).issubset(table.c.keys()) or set(map(len, items)) != {len(first)}:
            return None
        return tuple(first)

    def _rows(self, table: Table, items: list[Any]) -> list[dict[str, Any]]:
        # Once per item: one set test, and the (slower) lookups in table.c that name the
        # unknown column only when that test fails.
        columns = set(table.c.keys())
        rows = []
        for item in items:
            # A dict is sent as it is (never changed here): copying it cost more than the
            # rest of the row's Python.
            row = item if type(item) is dict else item_to_dict(item)
            if not columns.issuperset(row):
                unknown = [k for k in row if k not in table.c]
                if unknown:
                    raise ItemFormatError(
                        f"table {table.name!r} has no column {unknown[0]!r}", unknown[0]
                    )
            rows.append(row)
        return rows

    def _execute(
        self,
        connection: Connection,
        table: Table,
        items: list[Any],
        keys: tuple[str, ...] | None,
    ) -> None:
        # executemany needs one set of columns: send each run of rows with equal keys
        # together, in order. Usually all items have the same keys: with ``keys`` from
        # _same_length (each item as many keys as these), the plan's own lookups of them
        # tell, and then there is no per-row Python loop; a row that lacks one of them (so
        # has another key) sends nothing, and the chunk goes the row by row way.
        if keys is not None and self._plan(connection, table, keys).execute(
            connection, items, checked=False
        ):
            return
        rows = self._rows(table, items)
        if len(set(map(tuple, rows))) == 1:
            self._plan(connection, table, tuple(rows[0])).execute(connection, rows)
            return
        start = 0
        while start < len(rows):
            keys = tuple(rows[start])
            end = start + 1
            while end < len(rows) and tuple(rows[end]) == keys:
                end += 1
            self._plan(connection, table, keys).execute(connection, rows[start:end])
            start = end

    def _plan(self, connection: Connection, table: Table, keys: tuple[str, ...]) -> _InsertPlan:
        """The executemany (or COPY) of rows that have ``keys``, built once."""
        cache_key = (connection.dialect.name, keys)
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = _InsertPlan.build(connection, table, self._statement(table, keys), keys)
            plan.copy = plan.copy and not self.upsert_on
            self._plans[cache_key] = plan
        return plan

    def write(self, items: list[Any]) -> None:
        if self._table is None or self._engine is None:
            raise RuntimeError(f"{self.name} is not open: call open(ctx) first")
        table = self._table
        if not items:
            return
        keys = self._same_length(table, items)
        tx = self._joined()
        if tx is not None:
            self._execute(tx.connection, table, items, keys)  # committed by the engine
            return
        with self.engine.begin() as connection:
            self._execute(connection, table, items, keys)

    @property
    def table_object(self) -> Table | None:
        """The Table written to, once opened."""
        return self._table


class _InsertPlan:
    """An INSERT compiled once for a table, a dialect and a set of columns, sent to the
    driver as it is: an executemany of parameter tuples (``exec_driver_sql``: events,
    error wrapping and the transaction stay SQLAlchemy's), or on PostgreSQL with psycopg
    and without ``upsert_on`` a ``COPY ... FROM STDIN`` on the same connection, in the same
    transaction. Compiling, building the parameters of each row (``construct_params``) and
    the execution context cost more than the driver's own work for the same rows.

    Values go through the column types' bind processors (e.g. SQLite stores a DateTime as
    text), as SQLAlchemy would send them. A statement that needs Python-side defaults
    (``insert_prefetch``) or binds other than the row's keys is executed by SQLAlchemy."""

    def __init__(
        self, statement: Any, keys: tuple[str, ...], sql: str | None, names: list[str] | None
    ) -> None:
        self.statement = statement  # the Core statement (the fallback)
        self.keys = frozenset(keys)
        self.sql = sql  # None: execute the statement through SQLAlchemy
        self.names = names  # the row keys in parameter order
        self.processors: list[Any] = []
        self.named: list[str] | None = None  # the parameters' names for a named paramstyle
        self.copy = False
        self.copy_sql = ""

    @classmethod
    def build(
        cls, connection: Connection, table: Table, statement: Any, keys: tuple[str, ...]
    ) -> _InsertPlan:
        dialect = connection.dialect
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        names = list(compiled.positiontup or ()) if compiled.positional else list(keys)
        # The parameters must look up every key (execute(checked=False) relies on it).
        if compiled.insert_prefetch or not set(compiled.binds) == set(names) == set(keys):
            return cls(statement, keys, None, None)
        plan = cls(statement, keys, compiled.string, names)
        processors = compiled._bind_processors
        plan.processors = [processors.get(name) for name in names]
        if not compiled.positional:
            escaped = compiled.escaped_bind_names
            plan.named = [escaped.get(name, name) for name in names]
        if dialect.name == "postgresql" and dialect.driver == "psycopg":
            preparer = dialect.identifier_preparer
            columns = ", ".join(preparer.quote(table.c[name].name) for name in names)
            plan.copy = True
            plan.copy_sql = f"COPY {preparer.format_table(table)} ({columns}) FROM STDIN"
        return plan

    def _parameters(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        names = self.names or []
        if any(self.processors):
            # Column by column, so the per-value work is C's map (SQLAlchemy calls a
            # processor for None too, and so does this); the columns are iterators that
            # zip draws from together (no list per column).
            columns = [
                map(operator.itemgetter(name), rows)
                if process is None
                else map(process, map(operator.itemgetter(name), rows))
                for name, process in zip(names, self.processors)  # noqa: B905
            ]
            return list(zip(*columns))  # noqa: B905
        if len(names) == 1:
            only = names[0]
            return [(row[only],) for row in rows]
        return list(map(operator.itemgetter(*names), rows))

    def execute(
        self, connection: Connection, rows: list[dict[str, Any]], *, checked: bool = True
    ) -> bool:
        """Sends ``rows``, which all have the plan's keys. With ``checked=False`` each row
        is only known to have as many keys: then a row without one of them (so with
        another key) makes it send nothing and return False."""
        if self.sql is None:
            # SQLAlchemy would take the keys of the first row for all: check them here.
            if not checked and not all(map(self.keys.issuperset, rows)):
                return False
            connection.execute(self.statement, rows)
            return True
        try:
            values = self._parameters(rows)  # looks up each key in each row
        except KeyError:
            if checked:
                raise
            return False
        if self.copy:
            self._copy(connection, values)
        elif self.named is not None:
            named = self.named
            connection.exec_driver_sql(self.sql, [dict(zip(named, v)) for v in values])  # noqa: B905
        else:
            connection.exec_driver_sql(self.sql, values)
        return True

    def _copy(self, connection: Connection, values: list[tuple[Any, ...]]) -> None:
        dialect = connection.dialect
        driver: Any = connection.connection.driver_connection
        try:
            with driver.cursor() as cursor, cursor.copy(self.copy_sql) as copy:
                for row in values:
                    copy.write_row(row)
        except dialect.loaded_dbapi.Error as exc:
            # The same exception an executemany would raise (e.g. IntegrityError), so
            # skip and retry policies written against SQLAlchemy's errors still apply.
            raise DBAPIError.instance(
                self.copy_sql, None, exc, dialect.loaded_dbapi.Error, dialect=dialect
            ) from exc


__all__ = [
    "SqlItemReader",
    "SqlItemWriter",
    "decode_key",
    "dispose_engines",
    "encode_key",
    "engine_for",
]
