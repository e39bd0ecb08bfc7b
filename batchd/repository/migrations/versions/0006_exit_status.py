"""Exit statuses of step and job executions, which job flows route on (DESIGN §8).

Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

TABLES = ("batch_step_execution", "batch_job_execution")


def upgrade() -> None:
    # NULL (rows written before): the exit status is the status's name.
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("exit_status", sa.String(100)))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("exit_status")
