"""Schedule fires that wait for other jobs (``after``), and their deadlines (DESIGN §7).

Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from batchd.repository.tables import UTCDateTime

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    # batch_alter_table: SQLite cannot add a column to a table with constraints in place.
    with op.batch_alter_table("batch_schedule_fire") as batch:
        # "dependency_timeout" does not fit in 16.
        batch.alter_column("outcome", type_=sa.String(32), existing_nullable=False)
        batch.add_column(sa.Column("business_date", sa.String(10)))
        batch.add_column(sa.Column("params", sa.Text))
        batch.add_column(sa.Column("waits_for", sa.Text))
        batch.add_column(sa.Column("wait_until", UTCDateTime))
        batch.add_column(sa.Column("deadline_at", UTCDateTime))
        batch.add_column(sa.Column("deadline_state", sa.String(16)))
    # Every node polls for waiting fires and for deadlines still open, about once a second.
    op.create_index("ix_schedule_fire_outcome", "batch_schedule_fire", ["outcome"])
    op.create_index("ix_schedule_fire_deadline", "batch_schedule_fire", ["deadline_state"])


def downgrade() -> None:
    op.drop_index("ix_schedule_fire_deadline", "batch_schedule_fire")
    op.drop_index("ix_schedule_fire_outcome", "batch_schedule_fire")
    with op.batch_alter_table("batch_schedule_fire") as batch:
        for column in (
            "deadline_state",
            "deadline_at",
            "wait_until",
            "waits_for",
            "params",
            "business_date",
        ):
            batch.drop_column(column)
        batch.alter_column("outcome", type_=sa.String(16), existing_nullable=False)
