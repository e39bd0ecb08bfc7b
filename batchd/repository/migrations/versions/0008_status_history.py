"""The history of every status change of job and step executions, with time and node.

Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from batchd.repository.tables import UTCDateTime

revision = "0008"
down_revision = "0007"

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "batch_status_history",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("job_execution_id", _ID, nullable=False),
        sa.Column("step_execution_id", _ID),
        sa.Column("step_name", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
        sa.Column("node", sa.String(255)),
        sa.Column("message", sa.Text),
    )
    op.create_index("ix_status_history_execution", "batch_status_history", ["job_execution_id"])


def downgrade() -> None:
    op.drop_index("ix_status_history_execution", "batch_status_history")
    op.drop_table("batch_status_history")
