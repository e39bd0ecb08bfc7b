"""Nodes sharing the repository, and which node claimed each fire and file.

Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from batchd.repository.tables import UTCDateTime

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "batch_node",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("heartbeat", UTCDateTime, nullable=False),
        sa.Column("clock_offset_ms", sa.Integer, nullable=False, server_default="0"),
    )
    # batch_alter_table: SQLite cannot add a column to a table with constraints in place.
    with op.batch_alter_table("batch_schedule_fire") as batch:
        batch.add_column(sa.Column("node", sa.String(200)))
    with op.batch_alter_table("batch_trigger_file") as batch:
        batch.add_column(sa.Column("node", sa.String(200)))
    # Crash recovery looks up which fire or file started an execution.
    op.create_index("ix_schedule_fire_execution", "batch_schedule_fire", ["job_execution_id"])
    op.create_index("ix_trigger_file_execution", "batch_trigger_file", ["job_execution_id"])


def downgrade() -> None:
    op.drop_index("ix_trigger_file_execution", "batch_trigger_file")
    op.drop_index("ix_schedule_fire_execution", "batch_schedule_fire")
    with op.batch_alter_table("batch_trigger_file") as batch:
        batch.drop_column("node")
    with op.batch_alter_table("batch_schedule_fire") as batch:
        batch.drop_column("node")
    op.drop_table("batch_node")
