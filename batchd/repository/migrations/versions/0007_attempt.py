"""The attempt of a job execution within its instance (1 for the first start, one more for
each restart), which the daemon's automatic retries count.

Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    with op.batch_alter_table("batch_job_execution") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer, nullable=False, server_default="1"))
    # Executions written before: their rank within their instance.
    op.execute(
        "UPDATE batch_job_execution SET attempt = (SELECT COUNT(*) FROM batch_job_execution AS e"
        " WHERE e.instance_id = batch_job_execution.instance_id"
        " AND e.id <= batch_job_execution.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("batch_job_execution") as batch:
        batch.drop_column("attempt")
