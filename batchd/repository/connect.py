"""Opening the repository's database: URLs, SQLite pragmas, MySQL's character set and
isolation level, and transaction mode."""

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

# SQLAlchemy's names of MySQL and MariaDB (``mariadb+pymysql://`` is MariaDB's own name).
MYSQL_BACKENDS = ("mysql", "mariadb")
SUPPORTED_BACKENDS = ("sqlite", "postgresql", *MYSQL_BACKENDS)


def parse_database_url(url: str | URL) -> URL:
    """Parse ``url`` or raise RepositoryError naming it (without its password)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise RepositoryError(f"cannot parse database URL {url!r}: {exc}") from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise RepositoryError(
            f"unsupported database {backend!r} in "
            f"{parsed.render_as_string(hide_password=True)}: use sqlite:///, "
            "postgresql+psycopg:// or mysql+pymysql://"
        )
    if backend == "postgresql" and parsed.drivername == "postgresql":
        # psycopg 3 is the driver batchd ships with; plain postgresql:// means psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend in MYSQL_BACKENDS:
        parsed = _mysql_url(parsed)
    return parsed


def _mysql_url(parsed: URL) -> URL:
    """PyMySQL (the ``batchd[mysql]`` extra) for a bare mysql:// or mariadb://, and a
    utf8mb4 connection: MySQL's ``utf8`` is utf8mb3, which cannot hold every character."""
    if parsed.drivername in MYSQL_BACKENDS:
        parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
    charset = parsed.query.get("charset", "utf8mb4")
    if charset != "utf8mb4":
        raise RepositoryError(
            f"{parsed.render_as_string(hide_password=True)}: charset={charset} cannot hold "
            "every character; batchd talks to MySQL in utf8mb4 (leave charset out)"
        )
    return parsed.update_query_dict({"charset": "utf8mb4"})


def create_database_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An Engine for the repository; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE."""
    parsed = parse_database_url(url)
    if parsed.get_backend_name() in MYSQL_BACKENDS:
        # REPEATABLE READ (MySQL's default) reads a transaction's first snapshot: a
        # compare-and-set or a claim must see the rows committed since, as on PostgreSQL.
        kwargs.setdefault("isolation_level", "READ COMMITTED")
        # The server closes idle connections (wait_timeout): test them before use.
        kwargs.setdefault("pool_pre_ping", True)
        if "unix_socket" in parsed.query and not any(k.startswith("ssl") for k in parsed.query):
            # TLS protects nothing on a local socket, and PyMySQL's "preferred" TLS builds a
            # context (loading every CA certificate) for each connection: ~0.2 s of CPU.
            kwargs["connect_args"] = {"ssl_disabled": True, **kwargs.get("connect_args", {})}
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise RepositoryError(
            f"cannot open database {parsed.render_as_string(hide_password=True)}: {exc}"
        ) from None
    except ModuleNotFoundError as exc:
        raise RepositoryError(
            f"cannot open database {parsed.render_as_string(hide_password=True)}: its driver "
            f"{exc.name} is not installed (for MySQL and MariaDB: pip install 'batchd[mysql]')"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    from batchd.repository.tables import use_dialect  # tables imports this module

    use_dialect(engine.dialect.name)
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
