"""The chunk transaction that writers may join.

The engine publishes the open connection of the chunk being committed in
:data:`current_chunk_transaction`, so that a writer targeting the repository's own
database writes in the same transaction as the checkpoint (exactly-once), without
``batchd.items`` importing the engine or the repository.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL, make_url


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


def database_identity(url: str | URL) -> str:
    """A string equal for two URLs that reach the same database.

    SQLite files compare by their real path; other databases by driver-less URL
    without password (``postgresql://user@host:5432/db``).
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return f"sqlite:{database}"
        return "sqlite:" + os.path.realpath(database)
    host = parsed.host or "localhost"
    port = parsed.port or ""
    return f"{backend}://{parsed.username or ''}@{host}:{port}/{parsed.database or ''}"
