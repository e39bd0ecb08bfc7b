"""Schedule fires and claimed trigger files.

Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from batchd.repository.connect import MYSQL_BACKENDS
from batchd.repository.tables import Id, UTCDateTime

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    mysql = op.get_bind().dialect.name in MYSQL_BACKENDS
    op.create_table(
        "batch_schedule_fire",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("schedule_name", sa.String(200), nullable=False),
        sa.Column("fire_time", UTCDateTime, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("job_execution_id", Id),
        sa.Column("message", sa.Text),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("schedule_name", "fire_time", name="uq_schedule_fire"),
    )
    op.create_table(
        "batch_trigger_file",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("watch_name", sa.String(200), nullable=False),
        sa.Column("file_name", sa.String(1000), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("job_execution_id", Id),
        sa.Column("reason", sa.Text),
        sa.Column("claimed_at", UTCDateTime, nullable=False),
        *(
            # A key of utf8mb4 file names would pass MySQL's 3072 bytes: key their SHA-256.
            [sa.Column("file_name_sha256", sa.String(64), sa.Computed("SHA2(file_name, 256)", True))]
            if mysql
            else [sa.UniqueConstraint("watch_name", "file_name", "sha256", name="uq_trigger_file")]
        ),
    )
    if mysql:
        op.create_index(
            "uq_trigger_file",
            "batch_trigger_file",
            ["watch_name", "file_name_sha256", "sha256"],
            unique=True,
        )


def downgrade() -> None:
    op.drop_table("batch_trigger_file")
    op.drop_table("batch_schedule_fire")
