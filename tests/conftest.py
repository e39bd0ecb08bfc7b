"""Shared fixtures: SQLite and PostgreSQL database URLs.

``database_url`` runs a test once on SQLite and once on PostgreSQL (marked ``postgres``). The
PostgreSQL server starts lazily, once per session, only when a test asks for it. Outside CI a
machine without PostgreSQL skips those tests; in CI (``CI=true``) that is a failure.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchd import JobOperator, JobRegistry, SqlJobRepository
from tests.pgserver import PostgresNotFound, PostgresServer

TEMPLATE_DB = "batchd_template"
_db_counter = itertools.count(1)


def _migrate_template(url: str) -> None:
    """Create the batchd schema in the template database (SqlJobRepository migrates on init)."""
    from batchd.repository import SqlJobRepository

    SqlJobRepository(url).dispose()


def _repository_available() -> bool:
    """Whether ``batchd.repository`` exists yet (it is written alongside this test setup)."""
    try:
        import batchd.repository  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name in ("batchd", "batchd.repository"):
            return False
        raise  # the package exists but is broken: say so, don't hide it
    return True


# Prepares the template database that every ``pg_url`` database is cloned from (one migration
# per session instead of one per test). Set to None to hand out empty databases.
prepare_template: Callable[[str], None] | None = _migrate_template


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the PostgreSQL server ``postgres`` (so ``-m "not postgres"``
    deselects them); ``database_url``'s PostgreSQL case is marked by its parameter."""
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def running_postgres_server() -> Iterator[PostgresServer]:
    """A started PostgreSQL server in a temp dir (see tests/pgserver.py), stopped and
    removed afterwards; the test is skipped without PostgreSQL, except in CI, where it
    fails."""
    try:
        server = PostgresServer()
    except PostgresNotFound as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL tests must never be skipped in CI: {e}", pytrace=False)
        pytest.skip(str(e))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session."""
    yield from running_postgres_server()


@pytest.fixture(scope="session")
def _pg_template(postgres_server: PostgresServer) -> str | None:
    """Name of a database migrated once per session, cloned by ``pg_url``; None if none."""
    if prepare_template is None:
        return None
    if prepare_template is _migrate_template and not _repository_available():
        return None
    url = postgres_server.create_database(TEMPLATE_DB)
    prepare_template(url)
    return TEMPLATE_DB


@pytest.fixture
def pg_url(postgres_server: PostgresServer, _pg_template: str | None) -> Iterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL database for this test (schema already created
    when the repository package is importable); dropped after the test."""
    name = f"t_{next(_db_counter)}"
    yield postgres_server.create_database(name, template=_pg_template)
    # Dropped (forcing out leftover connections) so hundreds of tests don't fill the disk.
    postgres_server.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy URL of a fresh SQLite file in the test's tmp_path."""
    return f"sqlite:///{tmp_path / 'batchd.db'}"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """The test runs twice: on a SQLite file and on a fresh PostgreSQL database."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def repository(database_url: str) -> Iterator[SqlJobRepository]:
    """A job repository on ``database_url`` (so: once on SQLite, once on PostgreSQL)."""
    repo = SqlJobRepository(database_url)
    yield repo
    repo.dispose()


@pytest.fixture
def registry() -> JobRegistry:
    return JobRegistry()


@pytest.fixture
def operator(repository: SqlJobRepository, registry: JobRegistry) -> Iterator[JobOperator]:
    """An operator with a short heartbeat, shut down after the test."""
    op = JobOperator(repository, registry, max_concurrent_jobs=4, heartbeat=0.2)
    yield op
    op.shutdown(wait=True)
