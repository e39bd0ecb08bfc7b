"""Alembic environment: batchd always runs migrations on a connection it passes in."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Table, event

from batchd.repository.tables import metadata, mysql_table_options, use_dialect

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("batchd migrations run through batchd.repository.migrate.upgrade()")

TABLE_OPTIONS = mysql_table_options(connection)
use_dialect(connection.dialect.name)


def _with_table_options(table: Table, *_: Any, **__: Any) -> None:
    """Every table a migration creates on MySQL gets batchd's character set and collation,
    whatever the database's defaults (see mysql_table_options)."""
    for key, value in TABLE_OPTIONS.items():
        table.dialect_kwargs.setdefault(key, value)


context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="batch_alembic_version",
    render_as_batch=True,  # SQLite alters tables by copying them
)
event.listen(Table, "before_create", _with_table_options)
try:
    with context.begin_transaction():
        context.run_migrations()
finally:
    event.remove(Table, "before_create", _with_table_options)
