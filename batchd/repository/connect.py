"""Opening the repository's database: URLs, SQLite pragmas and transaction mode."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from batchd.errors import RepositoryError

# Execution option of connections that only read (SQLite then begins a deferred transaction).
READ_ONLY_OPTION = "batchd_read_only"

# How long a SQLite writer waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def parse_database_url(url: str | URL) -> URL:
    """Parse ``url`` or raise RepositoryError naming it (without its password)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise RepositoryError(f"cannot parse database URL {url!r}: {exc}") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise RepositoryError(
            f"unsupported database {parsed.get_backend_name()!r} in "
            f"{parsed.render_as_string(hide_password=True)}: use sqlite:/// or postgresql+psycopg://"
        )
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # psycopg 3 is the driver batchd ships with; plain postgresql:// means psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_database_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An Engine for the repository; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE."""
    parsed = parse_database_url(url)
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise RepositoryError(
            f"cannot open database {parsed.render_as_string(hide_password=True)}: {exc}"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit reported to the engine survives power loss, not only a crash.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        # A write transaction takes the write lock at BEGIN: a deferred one that reads and
        # then writes fails with SQLITE_BUSY at once when another process wrote in between,
        # instead of waiting for the busy timeout. Reads stay deferred so that they never
        # wait for a writer (WAL lets them see the last commit).
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
