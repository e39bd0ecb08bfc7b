"""Creating and upgrading the schema: only ever through the Alembic migrations."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from batchd.errors import RepositoryError
from batchd.repository.connect import MYSQL_BACKENDS, READ_ONLY_OPTION

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported where it is used: a partition's worker process opens the repository
# without upgrading it, and a daemon whose schema is already at head does not import it at
# all (its modules, Mako and Pygments with them, would stay in memory for the daemon's life):
# the revision is checked first by reading the version table and the migration files.

log = logging.getLogger(__name__)

VERSION_TABLE = "batch_alembic_version"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# Any constant works; it names the advisory lock that serialises concurrent upgrades.
_PG_MIGRATION_LOCK = 0x6261_7463_6864  # "batchd"


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


_REVISION_LINE = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.*?)\s*$", re.MULTILINE)


def newest_revision_in_files() -> str | None:
    """The head revision read from the migration files without Alembic: the one revision no
    other names as its ``down_revision``; None when that is not plain (several heads, a
    revision line this reading does not understand), and Alembic is then asked."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for key, value in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            if value == "None" and key == "down_revision":
                continue
            if len(value) < 2 or value[0] not in "\"'" or value[-1] != value[0]:
                return None
            (revisions if key == "revision" else parents).add(value[1:-1])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _at_head(connection: Connection) -> bool:
    """Whether the schema is at the newest revision, read without importing Alembic (a
    False that is wrong only costs the upgrade below, which then finds nothing to do)."""
    newest = newest_revision_in_files()
    if newest is None or not inspect(connection).has_table(VERSION_TABLE):
        return False
    stored = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
    return list(stored) == [newest]


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``; safe when several processes do it at once."""
    with engine.connect().execution_options(**{READ_ONLY_OPTION: True}) as probe:
        up_to_date = revision == "head" and _at_head(probe)
        if probe.dialect.name in MYSQL_BACKENDS:
            from batchd.repository import mysql

            mysql.check_server(probe, upgrading=not up_to_date)
        if up_to_date:
            return
    if engine.dialect.name in MYSQL_BACKENDS:
        _upgrade_mysql(engine, revision)
        return
    with engine.begin() as connection:
        # Serialise upgrades: on SQLite the transaction already holds the write lock
        # (BEGIN IMMEDIATE); on PostgreSQL an advisory lock does it.
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        _run_migrations(connection, revision)


def _run_migrations(connection: Connection, revision: str) -> None:
    from alembic import command

    config = _alembic_config()
    config.attributes["connection"] = connection
    before = current_revision(connection)
    command.upgrade(config, revision)
    after = current_revision(connection)
    if before != after:
        log.info("upgraded the batchd schema from %s to %s", before, after)


def _upgrade_mysql(engine: Engine, revision: str) -> None:
    """MySQL commits at every DDL statement, so a transaction cannot serialise upgrades: a
    named lock of the session does (released when the session ends, even by a kill)."""
    from batchd.repository import mysql

    with engine.connect() as connection:
        locked = connection.execute(
            text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": mysql.MIGRATION_LOCK, "timeout": mysql.LOCK_TIMEOUT_SECONDS},
        ).scalar_one()
        if locked != 1:
            raise RepositoryError(
                f"another process has been upgrading the batchd schema for over "
                f"{mysql.LOCK_TIMEOUT_SECONDS}s (lock {mysql.MIGRATION_LOCK!r})"
            )
        connection.commit()
        try:
            with connection.begin():
                _run_migrations(connection, revision)
        finally:
            connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": mysql.MIGRATION_LOCK})
            connection.commit()
