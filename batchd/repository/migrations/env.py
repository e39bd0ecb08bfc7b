"""Alembic environment: batchd always runs migrations on a connection it passes in."""

from __future__ import annotations

from alembic import context

from batchd.repository.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("batchd migrations run through batchd.repository.migrate.upgrade()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="batch_alembic_version",
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
