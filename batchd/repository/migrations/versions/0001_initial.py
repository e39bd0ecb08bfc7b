"""Initial job repository schema.

Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from batchd.repository.connect import MYSQL_BACKENDS
from batchd.repository.tables import Id, UTCDateTime

# Frozen here: a migration must not change when the code's constants do.
RUNNING_SQL = "status IN ('STARTED', 'STARTING', 'STOPPING')"

revision = "0001"
down_revision = None


def _reference(
    name: str, target: str, constraint: str, *, primary_key: bool = False
) -> sa.Column[int]:
    """A NOT NULL column that refers to ``target`` (table.id) by a named foreign key."""
    fk = sa.ForeignKey(target, name=constraint)
    return sa.Column(name, Id, fk, primary_key=primary_key, nullable=False)


def _counter(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger, nullable=False, server_default="0")


def upgrade() -> None:
    op.create_table(
        "batch_job_instance",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("job_name", sa.String(200), nullable=False),
        sa.Column("job_key", sa.String(64), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("create_time", UTCDateTime, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("job_name", "job_key", name="uq_job_instance_name_key"),
    )
    op.create_table(
        "batch_job_execution",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        _reference("instance_id", "batch_job_instance.id", "fk_job_execution_instance"),
        sa.Column("job_name", sa.String(200), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_message", sa.Text),
        sa.Column("create_time", UTCDateTime, nullable=False),
        sa.Column("start_time", UTCDateTime),
        sa.Column("end_time", UTCDateTime),
        sa.Column("last_updated", UTCDateTime, nullable=False),
        sa.Column("owner_host", sa.String(255)),
        sa.Column("owner_pid", sa.Integer),
        sa.Column("heartbeat", UTCDateTime),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index("ix_job_execution_instance", "batch_job_execution", ["instance_id"])
    op.create_index(
        "ix_job_execution_name_status", "batch_job_execution", ["job_name", "status"]
    )
    if op.get_bind().dialect.name in MYSQL_BACKENDS:
        # No partial index in MySQL: the instance id while running, NULL otherwise (a
        # unique index allows any number of NULLs).
        op.add_column(
            "batch_job_execution",
            sa.Column(
                "running_instance_id",
                Id,
                sa.Computed(f"CASE WHEN {RUNNING_SQL} THEN instance_id END", persisted=True),
            ),
        )
        op.create_index(
            "uq_job_execution_running",
            "batch_job_execution",
            ["running_instance_id"],
            unique=True,
        )
    else:
        op.create_index(
            "uq_job_execution_running",
            "batch_job_execution",
            ["instance_id"],
            unique=True,
            postgresql_where=sa.text(RUNNING_SQL),
            sqlite_where=sa.text(RUNNING_SQL),
        )
    op.create_table(
        "batch_job_execution_context",
        _reference(
            "job_execution_id",
            "batch_job_execution.id",
            "fk_job_context_execution",
            primary_key=True,
        ),
        sa.Column("context", sa.Text, nullable=False),
    )
    op.create_table(
        "batch_step_execution",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        _reference("job_execution_id", "batch_job_execution.id", "fk_step_execution_job_execution"),
        sa.Column("step_name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _counter("read_count"),
        _counter("write_count"),
        _counter("filter_count"),
        _counter("commit_count"),
        _counter("rollback_count"),
        _counter("read_skip_count"),
        _counter("process_skip_count"),
        _counter("write_skip_count"),
        sa.Column("execution_context", sa.Text, nullable=False),
        sa.Column("exit_message", sa.Text),
        sa.Column("start_time", UTCDateTime),
        sa.Column("end_time", UTCDateTime),
        sa.Column("last_updated", UTCDateTime, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index(
        "ix_step_execution_job_execution", "batch_step_execution", ["job_execution_id"]
    )
    op.create_table(
        "batch_step_context",
        _reference(
            "instance_id", "batch_job_instance.id", "fk_step_context_instance", primary_key=True
        ),
        sa.Column("step_name", sa.String(200), primary_key=True),
        sa.Column("context", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("batch_step_context")
    op.drop_table("batch_step_execution")
    op.drop_table("batch_job_execution_context")
    op.drop_index("uq_job_execution_running", "batch_job_execution")
    op.drop_index("ix_job_execution_name_status", "batch_job_execution")
    op.drop_index("ix_job_execution_instance", "batch_job_execution")
    op.drop_table("batch_job_execution")
    op.drop_table("batch_job_instance")
