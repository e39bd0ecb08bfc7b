"""SqlItemReader (keyset pagination, restart) and SqlItemWriter (joining the chunk's
transaction, its own transaction otherwise, upsert) on SQLite files and PostgreSQL."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Date,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from batchd.errors import ItemFormatError
from batchd.items import SqlItemReader, SqlItemWriter
from batchd.model import ChunkTransaction, current_chunk_transaction, database_identity
from tests.items.helpers import filled, make_ctx, persisted, read_all, read_n
from tests.support.jobs import keyed_table

metadata = MetaData()
payments = keyed_table("payments", metadata, payer=String(50), amount=Integer)
days = Table("days", metadata, Column("day", Date, primary_key=True), Column("n", Integer))
target = Table(
    "target",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
    Column("total", Integer, nullable=False, server_default="0"),
)
other = keyed_table("other", metadata)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    rows = [{"id": i * 3, "payer": f"p{i}", "amount": i} for i in range(1, 26)]
    with filled(database_url, payments, rows) as engine:
        yield engine


def count(engine: Engine, table: Table = target) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@contextmanager
def chunk_transaction(engine: Engine, url: str | None = None) -> Iterator[Any]:
    """What the engine does around a chunk: an open transaction published in the ContextVar
    (identified by what its database says it is when ``url`` is given, else by the Engine
    object)."""
    with engine.connect() as connection:
        connection.begin()
        tx = ChunkTransaction(
            connection=connection,
            engine=None if url else engine,
            database_id=database_identity(engine),
        )
        token = current_chunk_transaction.set(tx)
        try:
            yield connection
        finally:
            current_chunk_transaction.reset(token)


# ------------------------------------------------------------------------------------- reader
def test_reader_pages_by_key_never_offset(database_url: str, engine: Engine) -> None:
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements.append((statement, parameters))

    reader = SqlItemReader(database_url, payments, key="id", page_size=10)
    r = copy.copy(reader)
    r.open(make_ctx())
    event.listen(r.engine, "before_cursor_execute", record)
    try:
        items = []
        while (item := r.read()) is not None:
            items.append(item)
    finally:
        event.remove(r.engine, "before_cursor_execute", record)
        r.close()
    assert [i["id"] for i in items] == [i * 3 for i in range(1, 26)]
    assert items[0] == {"id": 3, "payer": "p1", "amount": 1}
    selects = [(s.upper(), p) for s, p in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 3  # 10 + 10 + 5 rows: the short page ends it
    for sql, parameters in selects:
        assert "LIMIT" in sql and "ORDER BY" in sql
        if "OFFSET" in sql:  # SQLAlchemy's SQLite dialect always adds "OFFSET 0"
            assert database_url.startswith("sqlite") and list(parameters)[-1] == 0
    assert "PAYMENTS.ID >" in selects[1][0]  # the next page starts after the last key


def test_reader_restart_after_last_item_handed_out(database_url: str, engine: Engine) -> None:
    query = select(payments.c.id, payments.c.payer).where(payments.c.amount > 2)
    template = SqlItemReader(database_url, query, key="id", page_size=10)
    reader = copy.copy(template)
    ctx = make_ctx()
    reader.open(ctx)
    reader.update(ctx)
    assert ctx == {}  # nothing read yet: nothing to save
    first = read_n(reader, 13)  # two pages fetched, 13 items handed out
    reader.update(ctx)
    assert ctx == {
        "SqlItemReader.last_key": first[-1]["id"],
        "SqlItemReader.done": 13,
        # Its progress for ctl --follow: the total is one COUNT of the query's rows.
        "batchd.progress": {"unit": "items", "done": 13, "total": 23, "start": 0},
    }
    read_n(reader, 3)  # read but not committed
    reader.close()
    rest = read_all(template, persisted(ctx))
    assert [i["id"] for i in first + rest] == [i * 3 for i in range(3, 26)]


def test_reader_date_keys_and_partitions(database_url: str, engine: Engine) -> None:
    start = date(2026, 11, 1)
    with engine.begin() as conn:
        conn.execute(insert(days), [{"day": start + timedelta(d), "n": d} for d in range(30)])
    template = SqlItemReader(engine, days, key="day", page_size=4, name="days")
    part = {"start": "2026-11-10", "end": "2026-11-19"}
    reader = copy.copy(template)
    ctx = make_ctx(partition=part)
    reader.open(ctx)
    assert [i["n"] for i in read_n(reader, 5)] == [9, 10, 11, 12, 13]
    reader.update(ctx)
    reader.close()
    assert ctx["days.last_key"] == {"$date": "2026-11-14"}  # JSON-serialisable
    rest = read_all(template, persisted(ctx))
    assert [i["n"] for i in rest] == [14, 15, 16, 17, 18]


def test_reader_unknown_key(database_url: str, engine: Engine) -> None:
    with pytest.raises(ValueError, match="key 'nope' is not a column"):
        copy.copy(SqlItemReader(database_url, payments, key="nope")).open(make_ctx())


def test_reader_pickles_with_an_engine(database_url: str, engine: Engine) -> None:
    reader = SqlItemReader(engine, payments, key="id", page_size=7)
    clone = pickle.loads(pickle.dumps(reader))  # the Engine travels as its URL
    assert len(read_all(clone)) == 25


# ------------------------------------------------------------------------------------- writer
ROWS = [{"id": i, "name": f"n{i}", "total": i * 10} for i in range(1, 6)]


@pytest.mark.parametrize("by", ["url", "engine"])
def test_writer_joins_the_chunk_transaction(database_url: str, engine: Engine, by: str) -> None:
    writer = copy.copy(SqlItemWriter(database_url, "target"))  # reflected in open()
    writer.open(make_ctx())
    with chunk_transaction(engine, database_url if by == "url" else None) as conn:
        # The chunk already holds a write lock (on SQLite, the whole file): a writer with a
        # connection of its own would wait for it; one that joins does not.
        conn.execute(insert(other), [{"id": 1}])
        writer.write(ROWS)
        assert conn.execute(select(func.count()).select_from(target)).scalar_one() == 5
        conn.rollback()
    assert count(engine) == 0 and count(engine, other) == 0

    with chunk_transaction(engine, database_url if by == "url" else None) as conn:
        writer.write(ROWS)
        conn.commit()
    assert count(engine) == 5
    writer.close()


def test_writer_commits_itself_without_a_chunk_transaction(
    database_url: str, engine: Engine
) -> None:
    @dataclasses.dataclass
    class Row:
        id: int
        name: str

    writer = copy.copy(SqlItemWriter(database_url, target))
    writer.open(make_ctx())
    writer.write([Row(1, "a"), {"id": 2, "name": "b", "total": 5}, Row(3, "c")])
    writer.close()
    with engine.connect() as conn:
        got = conn.execute(select(target).order_by(target.c.id)).all()
    assert [tuple(r) for r in got] == [(1, "a", 0), (2, "b", 5), (3, "c", 0)]


def test_writer_on_another_database_does_not_join(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    other_engine = create_engine(other_url)
    metadata.create_all(other_engine)
    writer = copy.copy(SqlItemWriter(other_url, "target"))
    writer.open(make_ctx())
    with chunk_transaction(engine, database_url) as conn:
        writer.write(ROWS[:2])
        conn.rollback()  # the chunk rolls back; the other database kept its own commit
    assert count(other_engine) == 2 and count(engine) == 0
    writer.close()
    other_engine.dispose()


def test_upsert(database_url: str, engine: Engine) -> None:
    writer = copy.copy(SqlItemWriter(database_url, target, upsert_on=["id"]))
    writer.open(make_ctx())
    writer.write(ROWS)
    with chunk_transaction(engine, database_url) as conn:
        writer.write([{"id": 2, "name": "two", "total": 2}, {"id": 9, "name": "nine", "total": 9}])
        conn.commit()
    writer.write(ROWS[:1])  # a replayed chunk (at-least-once) is harmless
    writer.close()
    with engine.connect() as conn:
        got = {r.id: (r.name, r.total) for r in conn.execute(select(target))}
    assert len(got) == 6
    assert got[2] == ("two", 2) and got[9] == ("nine", 9) and got[1] == ("n1", 10)


def test_writer_errors(database_url: str, engine: Engine) -> None:
    writer = copy.copy(SqlItemWriter(database_url, "target"))
    writer.open(make_ctx())
    with pytest.raises(ItemFormatError, match="no column 'nope'"):
        writer.write([{"id": 1, "name": "x", "nope": 1}])
    writer.close()
    with pytest.raises(ValueError, match="unknown column 'name2'"):
        copy.copy(SqlItemWriter(database_url, "target", upsert_on=["name2"])).open(make_ctx())


def test_writer_pickles_and_keeps_nothing_in_the_context(database_url: str, engine: Engine) -> None:
    writer = SqlItemWriter(engine, "target")
    clone = pickle.loads(pickle.dumps(writer))
    ctx = make_ctx()
    clone.open(ctx)
    clone.write(ROWS)
    clone.update(ctx)
    clone.complete(ctx)
    clone.close()
    assert ctx == {} and count(engine) == 5
    with engine.connect() as conn:
        assert conn.execute(text("select name from target where id = 5")).scalar_one() == "n5"


typed = Table(
    "typed",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("when", DateTime),
    Column("price", Numeric(10, 2)),
    Column("doc", JSON),
    Column("first name", String(20)),
    Column("n", Integer, default=7),
)


def test_writer_stores_values_as_sqlalchemy_does(database_url: str, engine: Engine) -> None:
    """Every column type's conversion (SQLite keeps a DateTime as text, JSON is serialised),
    a column name that needs quoting, a Python-side default for a missing key, None: the
    rows read back are those of SQLAlchemy's own INSERT of the same items."""
    typed.create(engine)
    items = [
        {
            "id": i,
            "when": datetime(2026, 11, i, 8, 30),
            "price": Decimal(f"{i}.25"),
            "doc": {"k": [i, None]},
            "first name": f"n{i}",
            "n": i,
        }
        for i in range(1, 4)
    ] + [{"id": 4, "when": None, "price": None, "doc": None, "first name": None, "n": None}]
    writer = copy.copy(SqlItemWriter(database_url, typed))
    writer.open(make_ctx())
    with chunk_transaction(engine, database_url) as conn:
        writer.write(items[:2])
        conn.commit()
    writer.write(items[2:])  # a transaction of its own
    writer.write([{"id": 5}])
    writer.close()
    with engine.begin() as conn:
        got = [tuple(r) for r in conn.execute(select(typed).order_by(typed.c.id))]
        conn.execute(typed.delete())
        conn.execute(insert(typed), items)
        conn.execute(insert(typed), [{"id": 5}])
        expected = [tuple(r) for r in conn.execute(select(typed).order_by(typed.c.id))]
    assert got == expected
    assert got[0][1] == datetime(2026, 11, 1, 8, 30) and got[4][5] == 7


def test_writer_duplicate_key_is_sqlalchemys_integrity_error(
    database_url: str, engine: Engine
) -> None:
    """A step's skip or retry policy names SQLAlchemy's exceptions whatever the writer sends
    to the driver (on PostgreSQL a COPY), and the chunk rolls back whole."""
    writer = copy.copy(SqlItemWriter(database_url, "target"))
    writer.open(make_ctx())
    writer.write(ROWS[:1])
    with chunk_transaction(engine, database_url) as conn:
        with pytest.raises(IntegrityError):
            writer.write([ROWS[1], ROWS[0]])
        conn.rollback()
    writer.close()
    assert count(engine) == 1


loose = Table(
    "loose",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("a", Integer),
    Column("b", Integer),
    Column("c", Integer),
    Column("d", Integer, default=7),  # a Python-side default: SQLAlchemy executes the INSERT
)


@pytest.mark.parametrize("how", ["insert", "upsert", "python default"])
def test_writer_chunk_of_items_with_other_keys(database_url: str, engine: Engine, how: str) -> None:
    """Items of one chunk with as many keys as the first but not the same ones (another
    column, the same ones in another order, a column the table lacks): each value lands in
    its own column, or the chunk fails as a whole with the unknown column named."""
    loose.create(engine)
    writer = copy.copy(SqlItemWriter(database_url, loose, upsert_on=["id"] * (how == "upsert")))
    writer.open(make_ctx())
    d = {} if how == "python default" else {"d": 0}
    chunk = [
        {"id": 1, "a": 1, "b": 2, **d},
        {"id": 2, "a": 3, "c": 4, **d},  # no "b": a "c" instead
        {"b": 5, "id": 3, "a": 6, **d},
        {"id": 4, "c": 8, "b": 9, **d},
    ]
    with chunk_transaction(engine, database_url) as conn:
        writer.write(chunk)
        conn.commit()
    writer.write([{"id": 5, "a": 10, "b": 11, **d}, {"id": 6, "a": 12, "b": 13, **d}])
    with chunk_transaction(engine, database_url) as conn:
        with pytest.raises(ItemFormatError, match="no column 'nope'"):
            writer.write([{"id": 7, "a": 1, "b": 1, **d}, {"id": 8, "a": 1, "nope": 1, **d}])
        conn.rollback()
    with pytest.raises(ItemFormatError, match="no column 'nope'"):
        writer.write([{"id": 9, "a": 1, "b": 1, **d}, {"id": 10, "nope": 1, "b": 1, **d}])
    writer.close()
    with engine.connect() as conn:
        got = [tuple(r) for r in conn.execute(select(loose).order_by(loose.c.id))]
    n = 7 if how == "python default" else 0
    assert got == [
        (1, 1, 2, None, n),
        (2, 3, None, 4, n),
        (3, 6, 5, None, n),
        (4, None, 9, 8, n),
        (5, 10, 11, None, n),
        (6, 12, 13, None, n),
    ]
