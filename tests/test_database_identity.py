"""Which database a writer writes to: the one its URL reaches, asked of the database
itself, never a look-alike URL of another server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from batchd import BatchStatus, JobBuilder, JobOperator, JobRegistry, SqlJobRepository, StepBuilder
from batchd.items import ListItemReader, SqlItemWriter
from batchd.items.sql_items import dispose_engines
from batchd.model import database_identity
from tests.conftest import running_postgres_server
from tests.pgserver import PostgresServer
from tests.support.jobs import create_target_table, target_table


@pytest.fixture
def second_server() -> Iterator[PostgresServer]:
    """A second PostgreSQL server on this machine, beside the session's."""
    yield from running_postgres_server()


def socket_url(server: PostgresServer, database: str) -> str:
    """The database through the server's Unix socket: the URL names no host, only a query."""
    return f"postgresql+psycopg://postgres@/{database}?host={server.tmpdir}&port={server.port}"


def rows_in(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(target_table())).scalar_one())
    finally:
        engine.dispose()


def test_a_writer_on_another_server_writes_there_not_into_the_repository(
    postgres_server: PostgresServer, second_server: PostgresServer
) -> None:
    # One database name on two servers, reached by URLs that differ only in their query.
    for server in (postgres_server, second_server):
        server.create_database("acc")
        create_target_table(server.url("acc"))
    repository_url, writer_url = (
        socket_url(postgres_server, "acc"),
        socket_url(second_server, "acc"),
    )
    repository = SqlJobRepository(repository_url)
    registry = JobRegistry()
    items = [{"id": i, "name": f"n{i}", "amount": str(i)} for i in range(1, 101)]
    registry.register(
        JobBuilder("load")
        .step(
            StepBuilder("load")
            .reader(ListItemReader(items))
            .writer(SqlItemWriter(writer_url, "target"))
            .chunk_size(10)
            .build()
        )
        .build()
    )
    operator = JobOperator(repository, registry)
    try:
        execution = operator.start("load")
        assert execution.status == BatchStatus.COMPLETED
        assert rows_in(writer_url) == 100
        assert rows_in(repository_url) == 0
        assert database_identity(repository.engine) != database_identity(create_engine(writer_url))
    finally:
        operator.shutdown()
        repository.dispose()
        dispose_engines()
        postgres_server.drop_database("acc")


def test_two_urls_of_one_postgresql_database_are_one_database(pg_url: str) -> None:
    """By TCP and by name, by Unix socket and by query: the same database."""
    name = pg_url.rsplit("/", 1)[1]
    port = pg_url.split(":")[-1].split("/")[0]
    by_tcp, by_query = (
        create_engine(pg_url),
        create_engine(f"postgresql+psycopg://postgres@/{name}?host=127.0.0.1&port={port}"),
    )
    role = f"reader_{name}"
    try:
        assert database_identity(by_tcp) == database_identity(by_query)
        other = create_engine(pg_url.rsplit("/", 1)[0] + "/postgres")
        assert database_identity(other) != database_identity(by_tcp)  # same server
        other.dispose()
        # Same database, another role: a writer keeps its own credentials.
        with by_tcp.begin() as conn:
            conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        as_role = create_engine(pg_url.replace("postgres@", f"{role}@"))
        assert database_identity(as_role) != database_identity(by_tcp)
        as_role.dispose()
    finally:
        by_tcp.dispose()
        by_query.dispose()
        cleanup = create_engine(pg_url)
        with cleanup.begin() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        cleanup.dispose()


def test_sqlite_files_are_known_by_the_file_not_the_path(tmp_path: Path) -> None:
    SqlJobRepository(f"sqlite:///{tmp_path / 'a.db'}").dispose()
    SqlJobRepository(f"sqlite:///{tmp_path / 'b.db'}").dispose()
    os.symlink(tmp_path / "a.db", tmp_path / "link.db")
    os.link(tmp_path / "a.db", tmp_path / "hard.db")
    engines = {
        name: create_engine(f"sqlite:///{tmp_path / name}")
        for name in ("a.db", "link.db", "hard.db", "b.db")
    }
    try:
        ids = {name: database_identity(engine) for name, engine in engines.items()}
        assert ids["a.db"] == ids["link.db"] == ids["hard.db"] != ids["b.db"]
        memory = create_engine("sqlite://")
        assert database_identity(memory) != database_identity(create_engine("sqlite://"))
    finally:
        for engine in engines.values():
            engine.dispose()
