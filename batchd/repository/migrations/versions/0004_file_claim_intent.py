"""A file claim records what its taker meant to do, for whoever finishes it after a crash.

Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # batch_alter_table: SQLite cannot add a column to a table with constraints in place.
    with op.batch_alter_table("batch_trigger_file") as batch:
        batch.add_column(sa.Column("destination", sa.Text))
        batch.add_column(sa.Column("params", sa.Text))
        batch.add_column(sa.Column("execution_floor", _ID))
    # The periodic pass looks for claims still "claimed".
    op.create_index("ix_trigger_file_state", "batch_trigger_file", ["state"])


def downgrade() -> None:
    op.drop_index("ix_trigger_file_state", "batch_trigger_file")
    with op.batch_alter_table("batch_trigger_file") as batch:
        batch.drop_column("execution_floor")
        batch.drop_column("params")
        batch.drop_column("destination")
