"""The chunk transaction that writers may join.

The engine publishes the open connection of the chunk being committed in
:data:`current_chunk_transaction`, so that a writer targeting the repository's own
database writes in the same transaction as the checkpoint (exactly-once), without
``batchd.items`` importing the engine or the repository.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkTransaction:
    """The chunk's open transaction.

    ``connection`` is a ``sqlalchemy.engine.Connection`` inside a transaction that the
    engine commits right after the checkpoint; ``database_id`` is
    :func:`database_identity` of the repository's database.
    """

    connection: Any
    engine: Any
    database_id: str


current_chunk_transaction: ContextVar[ChunkTransaction | None] = ContextVar(
    "batchd_chunk_transaction", default=None
)

# Asked once per Engine: a writer compares identities at every chunk.
_IDENTITIES: WeakKeyDictionary[Engine, str] = WeakKeyDictionary()
_IDENTITIES_LOCK = threading.Lock()
_UNIQUE = itertools.count(1)


def database_identity(engine: Engine) -> str:
    """A string equal for two Engines that reach the same database, asked of the database
    itself (a URL cannot tell: ``?host=/run/a`` and ``?host=/run/b`` are two servers).

    PostgreSQL: the cluster's system identifier, the current database and the role (a
    writer given other credentials keeps them); SQLite: the device and inode of the main
    database file; MySQL: the server's UUID (MariaDB: its host, port and data directory), the
    current database and the user. A database that cannot say (another
    dialect, an in-memory SQLite database, a server that refuses the question) is only
    the same as itself through this very Engine, so a writer never joins a transaction of
    a database it cannot prove is its own. One query per Engine, cached.
    """
    with _IDENTITIES_LOCK:
        known = _IDENTITIES.get(engine)
    if known is not None:
        return known
    identity = _ask(engine)
    with _IDENTITIES_LOCK:
        return _IDENTITIES.setdefault(engine, identity)


def _ask(engine: Engine) -> str:
    dialect = engine.dialect.name
    unique = f"{dialect}:unproven-{next(_UNIQUE)}"
    if dialect not in ("postgresql", "sqlite", "mysql", "mariadb"):
        return unique
    # A raw DBAPI connection: no BEGIN from the Engine's events (SQLite's BEGIN IMMEDIATE
    # would take the write lock just to ask a question); the pool rolls it back on return.
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            if dialect == "postgresql":
                return _postgresql_identity(cursor, engine, unique)
            if dialect in ("mysql", "mariadb"):
                return _mysql_identity(cursor, engine, unique)
            return _sqlite_identity(cursor, unique)
        finally:
            cursor.close()
    finally:
        raw.close()


def _postgresql_identity(cursor: Any, engine: Engine, unique: str) -> str:
    row = _answer(
        cursor,
        engine,
        "SELECT system_identifier::text, current_database(), current_user"
        " FROM pg_control_system()",
        "its system identifier",
    )
    if row is None:
        return unique
    system_id, database, user = row
    # The role too: a writer given other credentials must not write with the repository's.
    return f"postgresql:{system_id}/{database}/{user}"


def _mysql_identity(cursor: Any, engine: Engine, unique: str) -> str:
    # MySQL names its server with a UUID; MariaDB has none: its host name and data directory
    # (two servers of one host cannot share one) with its port.
    server = (
        "@@server_uuid"
        if not getattr(engine.dialect, "is_mariadb", False)
        else ("CONCAT(@@hostname, ':', @@port, ':', @@datadir)")
    )
    row = _answer(
        cursor,
        engine,
        f"SELECT {server}, DATABASE(), CURRENT_USER()",
        "which server it is",
    )
    if row is None:
        return unique
    server_id, database, user = row
    if database is None:  # no current database: table names go wherever the writer says
        return unique
    return f"mysql:{server_id}/{database}/{user}"


def _answer(cursor: Any, engine: Engine, query: str, what: str) -> Any:
    """The row ``query`` returns, or None (with a warning) when the server refuses it."""
    try:
        cursor.execute(query)
        return cursor.fetchone()
    except engine.dialect.loaded_dbapi.Error as error:
        text = str(error).strip()
        log.warning(
            "database %s does not tell %s (%s): writers join its chunk transactions only "
            "through this Engine",
            engine.url.render_as_string(hide_password=True),
            what,
            text.splitlines()[0] if text else type(error).__name__,
        )
        return None


def _sqlite_identity(cursor: Any, unique: str) -> str:
    cursor.execute("PRAGMA database_list")
    path = next((row[2] for row in cursor.fetchall() if row[1] == "main"), "")
    if not path:  # in memory (or a temporary database): private to its connection
        return unique
    try:
        status = os.stat(path)
    except OSError:
        return unique
    return f"sqlite:{status.st_dev}:{status.st_ino}"
