"""MariaDB (and MySQL) as the repository's database: the schema the migrations make there,
the guarantees PostgreSQL gives, and the servers and databases batchd refuses at start.

The engine's semantics run on MariaDB through ``database_url`` (see ON_MARIADB in
tests/conftest.py); this module holds what is MariaDB's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select, text

from batchd import BatchStatus, SqlJobRepository
from batchd.errors import RepositoryError
from batchd.model import database_identity
from batchd.repository import migrate
from batchd.repository.nodes import DatabaseClock
from batchd.repository.tables import MYSQL_ONLY_COLUMNS, metadata, trigger_file
from batchd.repository.triggers import TriggerStore
from tests.mysqlserver import MariaDBServer
from tests.test_repository import create

pytestmark = pytest.mark.mariadb

# The unique keys that MySQL's DDL makes differently (compared on their own below).
MYSQL_KEYS = {"uq_job_execution_running", "uq_trigger_file"}


@pytest.fixture
def repository(mariadb_url: str) -> Iterator[SqlJobRepository]:
    repo = SqlJobRepository(mariadb_url)
    yield repo
    repo.dispose()


def _same_elsewhere(obj: Any, name: str | None, type_: str, reflected: bool, _: Any) -> bool:
    if type_ == "column" and (obj.table.name, name) in MYSQL_ONLY_COLUMNS:
        return False
    return not (type_ in ("index", "unique_constraint") and name in MYSQL_KEYS)


def test_the_migrations_make_the_schema_of_the_tables(repository: SqlJobRepository) -> None:
    """Everything but MySQL's own DDL equals the tables; that DDL is what it should be."""
    with repository.engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={"version_table": migrate.VERSION_TABLE, "include_object": _same_elsewhere},
        )
        assert context.get_current_revision() == migrate.head_revision()
        assert compare_metadata(context, metadata) == []
    inspector = inspect(repository.engine)
    uniques = {
        ix["name"]: ix["column_names"]
        for table in ("batch_job_execution", "batch_trigger_file")
        for ix in inspector.get_indexes(table)
        if ix["unique"]
    }
    assert uniques == {
        "uq_job_execution_running": ["running_instance_id"],
        "uq_trigger_file": ["watch_name", "file_name_sha256", "sha256"],
    }
    with repository.engine.connect() as conn:
        collations = set(
            conn.execute(
                text(
                    "SELECT table_collation FROM information_schema.tables"
                    " WHERE table_schema = DATABASE() AND table_name LIKE 'batch\\_%'"
                    " AND table_name != :version"
                ),
                {"version": migrate.VERSION_TABLE},
            ).scalars()
        )
    assert collations == {"utf8mb4_nopad_bin"}


def test_times_keep_their_microseconds(mariadb_url: str) -> None:
    at = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    repository = SqlJobRepository(mariadb_url, clock=lambda: at)
    execution = create(repository)
    assert repository.require_execution(execution.id).create_time == at
    repository.dispose()


def test_names_differing_in_case_accents_or_trailing_spaces_are_different_names(
    repository: SqlJobRepository,
) -> None:
    """MySQL's default collations would call these equal; batchd's names are Python's."""
    keys = ["k", "K", "k ", "é", "e"]
    instances = {create(repository, key).instance_id for key in keys}
    assert len(instances) == len(keys)
    store = TriggerStore(repository, node="n1")
    claims = [store.claim_file("inbox", name, "0" * 64) for name in ("a.csv", "A.csv", "a.csv ")]
    assert all(claim is not None for claim in claims)
    assert store.claim_file("inbox", "a.csv", "0" * 64) is None  # the same name and content


def test_a_file_name_longer_than_an_index_key_is_claimed_once(
    repository: SqlJobRepository,
) -> None:
    store = TriggerStore(repository, node="n1")
    long_name = "ü" * 990 + ".csv"  # 1980 bytes of utf8mb4 beside the watch and hash
    assert store.claim_file("inbox", long_name, "1" * 64) is not None
    assert store.claim_file("inbox", long_name, "1" * 64) is None
    assert store.claim_file("inbox", long_name[:-1] + "x", "1" * 64) is not None
    with repository.reading() as conn:
        names = conn.execute(select(trigger_file.c.file_name)).scalars().all()
    assert long_name in names


def test_the_running_key_frees_the_instance_when_the_execution_ends(
    repository: SqlJobRepository,
) -> None:
    """The generated column is NULL once the execution ends: the instance can restart."""
    first = create(repository)
    repository.mark_started(first)
    repository.finish_execution(first, BatchStatus.FAILED, "boom", {})
    second = create(repository)
    assert second.instance_id == first.instance_id
    with repository.reading() as conn:
        keys = dict(
            conn.execute(
                text("SELECT id, running_instance_id FROM batch_job_execution")
            ).all()
        )
    assert keys == {first.id: None, second.id: first.instance_id}


def test_the_clock_is_the_servers(repository: SqlJobRepository) -> None:
    """Leases compare times of the database's clock (here the same machine's: no offset)."""
    clock = DatabaseClock()
    offset = clock.measure(repository)
    assert abs(offset) < timedelta(seconds=5)
    assert abs(clock() - datetime.now(UTC)) < timedelta(seconds=5)


def test_two_urls_of_one_database_are_one_database(
    mariadb_server: MariaDBServer, mariadb_url: str
) -> None:
    """By the URL and by a pymysql URL spelled otherwise: the same database; another
    database of the server, or another user, is not."""
    name = mariadb_url.split("/")[3].split("?")[0]
    engines = [
        create_engine(mariadb_url),
        create_engine(f"mariadb+pymysql://root@/{name}?unix_socket={mariadb_server.socket}"),
        create_engine(mariadb_server.url("mysql")),
    ]
    mariadb_server.execute(
        "CREATE USER IF NOT EXISTS 'other'@'localhost'",
        f"GRANT ALL ON `{name}`.* TO 'other'@'localhost'",
    )
    engines.append(create_engine(mariadb_server.url(name, user="other")))
    try:
        same, spelled_otherwise, other_database, other_user = map(database_identity, engines)
        assert same == spelled_otherwise
        assert other_database != same
        assert other_user != same
    finally:
        for engine in engines:
            engine.dispose()
        mariadb_server.execute("DROP USER IF EXISTS 'other'@'localhost'")


# ---------------------------------------------------------------- refused at start


def test_a_server_older_than_supported_is_refused() -> None:
    with MariaDBServer("--version=10.5.27-MariaDB") as old:
        old.create_database("batchd")
        with pytest.raises(RepositoryError, match=r"MariaDB 10\.5\.27 is older than batchd"):
            SqlJobRepository(old.url("batchd"))
        assert old.execute("SHOW TABLES", database="batchd") == []  # nothing was created


def test_a_database_in_utf8mb3_is_refused(mariadb_server: MariaDBServer) -> None:
    url = mariadb_server.create_database("in_utf8mb3", charset="utf8mb3")
    try:
        with pytest.raises(RepositoryError, match="uses the character set utf8mb3") as refused:
            SqlJobRepository(url)
        assert "ALTER DATABASE `in_utf8mb3` CHARACTER SET utf8mb4" in str(refused.value)
        assert mariadb_server.execute("SHOW TABLES", database="in_utf8mb3") == []
    finally:
        mariadb_server.drop_database("in_utf8mb3")


def test_a_connection_charset_other_than_utf8mb4_is_refused(mariadb_url: str) -> None:
    with pytest.raises(RepositoryError, match="charset=utf8 cannot hold every character"):
        SqlJobRepository(mariadb_url + "&charset=utf8")


def test_a_user_without_the_migrations_privileges_is_refused_until_the_schema_is_there(
    mariadb_server: MariaDBServer,
) -> None:
    url = mariadb_server.create_database("grants")
    mariadb_server.execute(
        "CREATE USER 'runner'@'localhost' IDENTIFIED BY 'pw'",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON `grants`.* TO 'runner'@'localhost'",
    )
    as_runner = mariadb_server.url("grants", user="runner", password="pw")
    try:
        with pytest.raises(
            RepositoryError,
            match=r"lacks the privileges CREATE, ALTER, INDEX, REFERENCES on database 'grants' "
            "that the schema's migrations need",
        ):
            SqlJobRepository(as_runner)
        assert mariadb_server.execute("SHOW TABLES", database="grants") == []
        SqlJobRepository(url).dispose()  # the owner migrates
        runner = SqlJobRepository(as_runner)  # then the runner needs only its DML
        execution = create(runner)
        assert runner.require_execution(execution.id).status == BatchStatus.STARTING
        runner.dispose()
        mariadb_server.execute("REVOKE DELETE ON `grants`.* FROM 'runner'@'localhost'")
        with pytest.raises(RepositoryError, match="lacks the privileges DELETE"):
            SqlJobRepository(as_runner)
    finally:
        mariadb_server.execute("DROP USER IF EXISTS 'runner'@'localhost'")
        mariadb_server.drop_database("grants")

