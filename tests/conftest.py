"""Shared fixtures: SQLite, PostgreSQL and MariaDB database URLs.

``database_url`` runs a test once on SQLite and once on PostgreSQL (marked ``postgres``), and
the tests of :data:`ON_MARIADB` once more on MariaDB (marked ``mariadb``). Each server starts
lazily, once per session (under pytest-xdist: once per worker, each in a directory and on a
port of its own), only when a test asks for it. Outside CI a machine without the server skips
those tests; in CI (``CI=true``) that is a failure.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from batchd import JobOperator, JobRegistry, SqlJobRepository
from tests.dbserver import DatabaseServer, ServerNotFound
from tests.mysqlserver import MariaDBServer
from tests.pgserver import PostgresServer

TEMPLATE_DB = "batchd_template"
Server = TypeVar("Server", bound=DatabaseServer)
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


# The tests whose ``database_url`` case runs on MariaDB too (a module, or a module::test):
# the engine's semantics, exactly-once with SqlItemWriter, the SQL items, partitions and
# the database identity. The other database tests run on SQLite and PostgreSQL only, to keep
# the suite's time; tests/test_mariadb.py and tests/daemon/test_nodes_mariadb.py add the
# start race and the daemons sharing one MariaDB.
ON_MARIADB = (
    # All but the schema comparison, which tests/test_mariadb.py makes knowing MySQL's DDL.
    "tests/test_repository.py::test_every_foreign_key_and_name_status_are_indexed",
    "tests/test_repository.py::test_the_database_refuses_a_second_running_execution",
    "tests/test_repository.py::test_same_instance_is_found_not_duplicated",
    "tests/test_repository.py::test_repository_reopens_an_existing_schema_without_changes",
    "tests/test_exactly_once.py::test_sql_output_is_exactly_once_after_20_random_kills",
    "tests/items/test_sql.py",
    "tests/test_partitions.py",
    "tests/test_database_identity.py",
    "tests/test_recovery.py",
)


def _runs_on_mariadb(item: pytest.Item) -> bool:
    test = item.nodeid.split("[", 1)[0]
    return any(test == selected or test.startswith(selected + "::") for selected in ON_MARIADB)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses the PostgreSQL server ``postgres`` (so ``-m "not postgres"``
    deselects them), and MariaDB's ``mariadb``; ``database_url``'s cases are marked by their
    parameter. A ``database_url`` test not in :data:`ON_MARIADB` loses its MariaDB case.

    The tests marked ``slow`` run first: under pytest-xdist a worker that ends on a long test
    keeps the whole run waiting, while short tests at the end even the workers out."""
    deselected = []
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
        if "mariadb_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mariadb)
        callspec = getattr(item, "callspec", None)
        on_mariadb = callspec is not None and callspec.params.get("database_url") == "mariadb"
        if on_mariadb and not _runs_on_mariadb(item):
            deselected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        dropped = set(deselected)
        items[:] = [item for item in items if item not in dropped]
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow first


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Escape what is not UTF-8 in the captured output and log (a file name of undecodable
    bytes, logged as it is): a pytest-xdist worker sends reports as UTF-8 and would die on it."""
    report.sections = [
        (title, content.encode("utf-8", "backslashreplace").decode("utf-8"))
        for title, content in report.sections
    ]


def running_server(new_server: Callable[[], Server]) -> Iterator[Server]:
    """A started server in a temp dir of its own (see tests/dbserver.py), stopped and
    removed afterwards; the test is skipped without the server's programs, except in CI,
    where it fails. Each pytest-xdist worker runs its own servers: nothing is shared."""
    try:
        server = new_server()
    except ServerNotFound as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"database tests must never be skipped in CI: {e}", pytrace=False)
        pytest.skip(str(e))
    with server:
        yield server


def running_postgres_server() -> Iterator[PostgresServer]:
    """A started PostgreSQL server (tests/pgserver.py), as :func:`running_server` says."""
    return running_server(PostgresServer)


def _template(server: DatabaseServer) -> str | None:
    """The name of a database of ``server`` prepared once, which the test databases copy;
    None if there is none to prepare."""
    if prepare_template is None:
        return None
    if prepare_template is _migrate_template and not _repository_available():
        return None
    prepare_template(server.create_database(TEMPLATE_DB))
    return TEMPLATE_DB


def _fresh_database(server: DatabaseServer, template: str | None) -> Iterator[str]:
    """The URL of a new database (a copy of ``template``), dropped after the test (forcing
    out leftover connections) so hundreds of tests don't fill the disk."""
    name = f"t_{next(_db_counter)}"
    yield server.create_database(name, template=template)
    server.drop_database(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (of this xdist worker)."""
    yield from running_postgres_server()


@pytest.fixture(scope="session")
def _pg_template(postgres_server: PostgresServer) -> str | None:
    """Name of a database migrated once per session, cloned by ``pg_url``; None if none."""
    return _template(postgres_server)


@pytest.fixture
def pg_url(postgres_server: PostgresServer, _pg_template: str | None) -> Iterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL database for this test (schema already created
    when the repository package is importable); dropped after the test."""
    yield from _fresh_database(postgres_server, _pg_template)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """A MariaDB server for the whole session (of this xdist worker)."""
    yield from running_server(MariaDBServer)


@pytest.fixture(scope="session")
def _mariadb_template(mariadb_server: MariaDBServer) -> str | None:
    """A database migrated once per session, copied by ``mariadb_url``; None if none."""
    return _template(mariadb_server)


@pytest.fixture
def mariadb_url(mariadb_server: MariaDBServer, _mariadb_template: str | None) -> Iterator[str]:
    """SQLAlchemy URL of a fresh MariaDB database for this test (schema already created),
    dropped after the test."""
    yield from _fresh_database(mariadb_server, _mariadb_template)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy URL of a fresh SQLite file in the test's tmp_path."""
    return f"sqlite:///{tmp_path / 'batchd.db'}"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """The test runs on a SQLite file and on a fresh PostgreSQL database (and, for the tests
    of ON_MARIADB, on a fresh MariaDB database)."""
    name = {"sqlite": "sqlite_url", "postgresql": "pg_url", "mariadb": "mariadb_url"}
    return str(request.getfixturevalue(name[request.param]))


@pytest.fixture
def repository(database_url: str) -> Iterator[SqlJobRepository]:
    """A job repository on ``database_url`` (so: on SQLite, on PostgreSQL, maybe MariaDB)."""
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


@pytest.fixture(autouse=True)
def _batchd_variables_kept() -> Iterator[None]:
    """The ``BATCHD_`` variables as they were before each test. Loading a config in this
    process exports ``BATCHD_DATABASE_URL`` (for job modules, as the daemon does for its
    own); left set, every daemon a later test starts on the same worker would inherit it
    and open that test's database instead of its own config's."""
    before = {name: value for name, value in os.environ.items() if name.startswith("BATCHD_")}
    yield
    for name in [name for name in os.environ if name.startswith("BATCHD_")]:
        if name not in before:
            del os.environ[name]
    os.environ.update(before)
