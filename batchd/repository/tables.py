"""The job repository's tables (SQLAlchemy Core).

The schema is created and upgraded only by the Alembic migrations in ``migrations/``;
these definitions are what the code queries, and a test checks they match.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeEngine

from batchd.model.status import RUNNING_STATUSES
from batchd.repository.connect import MYSQL_BACKENDS


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: SQLite keeps no time zone, so we never rely on it."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL_BACKENDS:
            # MySQL's DATETIME drops the fraction of a second unless asked to keep it.
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("batchd stores only time-zone-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]


# SQLite only auto-increments an INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")

# Status values that count as running, for the partial unique index below.
RUNNING_SQL = "status IN (" + ", ".join(f"'{s.value}'" for s in sorted(RUNNING_STATUSES)) + ")"

# MySQL and MariaDB have no partial index: there the migrations add a generated column that
# is the instance id while the execution runs and NULL otherwise, under the unique index
# uq_job_execution_running. And a file name is too long for an index key in utf8mb4: the
# unique key uq_trigger_file holds its SHA-256 instead. The code never reads these columns.
MYSQL_ONLY_COLUMNS = {
    ("batch_job_execution", "running_instance_id"),
    ("batch_trigger_file", "file_name_sha256"),
}


def mysql_table_options(bind: Connection) -> dict[str, Any]:
    """What every CREATE TABLE of the migrations says on MySQL and MariaDB (nothing
    elsewhere; migrations/env.py adds it to each): utf8mb4
    (whatever the database's default) with a binary no-pad collation, so that names are
    unique as Python compares them (the default collations ignore case, accents and trailing
    spaces)."""
    if bind.dialect.name not in MYSQL_BACKENDS:
        return {}
    mariadb = getattr(bind.dialect, "is_mariadb", False)
    collation = "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"
    # Keyed by the dialect's name: mariadb+pymysql:// reads mariadb_charset, not mysql_charset.
    name = bind.dialect.name
    return {f"{name}_charset": "utf8mb4", f"{name}_collate": collation}


def _id() -> Column[int]:
    return Column("id", Id, primary_key=True, autoincrement=True)


def _reference(
    name: str, target: str, constraint: str, *, primary_key: bool = False
) -> Column[int]:
    """A NOT NULL column that refers to ``target`` (table.id) by a named foreign key."""
    fk = ForeignKey(target, name=constraint)
    return Column(name, Id, fk, primary_key=primary_key, nullable=False)


metadata = MetaData()

job_instance = Table(
    "batch_job_instance",
    metadata,
    _id(),
    Column("job_name", String(200), nullable=False),
    Column("job_key", String(64), nullable=False),
    Column("params", Text, nullable=False),
    Column("create_time", UTCDateTime, nullable=False),
    # Bumped by every execution creation: it is the row lock that serialises them.
    Column("version", Integer, nullable=False, server_default="0"),
    UniqueConstraint("job_name", "job_key", name="uq_job_instance_name_key"),
)

job_execution = Table(
    "batch_job_execution",
    metadata,
    _id(),
    _reference("instance_id", "batch_job_instance.id", "fk_job_execution_instance"),
    Column("job_name", String(200), nullable=False),
    Column("params", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("exit_message", Text),
    Column("create_time", UTCDateTime, nullable=False),
    Column("start_time", UTCDateTime),
    Column("end_time", UTCDateTime),
    Column("last_updated", UTCDateTime, nullable=False),
    Column("owner_host", String(255)),
    Column("owner_pid", Integer),
    Column("heartbeat", UTCDateTime),
    Column("version", Integer, nullable=False),
    Column("exit_status", String(100)),  # migration 0006; NULL: the status's name
    # Migration 0007: 1 for an instance's first execution, one more for each restart.
    Column("attempt", Integer, nullable=False, server_default="1"),
    Index("ix_job_execution_instance", "instance_id"),
    Index("ix_job_execution_name_status", "job_name", "status"),
    # The database itself allows at most one running execution per instance.
    Index("uq_job_execution_running", "instance_id", unique=True),
)


def use_dialect(name: str) -> None:
    """Make the running-execution index partial (``WHERE`` the status runs) in dialect
    ``name``'s options, once a database of that dialect is opened.

    Not given to ``Index()`` above: a ``postgresql_where`` keyword makes SQLAlchemy import
    the PostgreSQL dialect (about 2 MiB resident) in every process, a daemon on SQLite too.
    Only the migrations create the schema; this keeps the definitions equal to what they
    create (a test compares them)."""
    if name in ("postgresql", "sqlite"):
        index = next(i for i in job_execution.indexes if i.name == "uq_job_execution_running")
        index.dialect_kwargs[f"{name}_where"] = text(RUNNING_SQL)

job_execution_context = Table(
    "batch_job_execution_context",
    metadata,
    _reference(
        "job_execution_id", "batch_job_execution.id", "fk_job_context_execution", primary_key=True
    ),
    Column("context", Text, nullable=False),
)

step_execution = Table(
    "batch_step_execution",
    metadata,
    _id(),
    _reference("job_execution_id", "batch_job_execution.id", "fk_step_execution_job_execution"),
    Column("step_name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("read_count", BigInteger, nullable=False, server_default="0"),
    Column("write_count", BigInteger, nullable=False, server_default="0"),
    Column("filter_count", BigInteger, nullable=False, server_default="0"),
    Column("commit_count", BigInteger, nullable=False, server_default="0"),
    Column("rollback_count", BigInteger, nullable=False, server_default="0"),
    Column("read_skip_count", BigInteger, nullable=False, server_default="0"),
    Column("process_skip_count", BigInteger, nullable=False, server_default="0"),
    Column("write_skip_count", BigInteger, nullable=False, server_default="0"),
    Column("execution_context", Text, nullable=False),
    Column("exit_message", Text),
    Column("start_time", UTCDateTime),
    Column("end_time", UTCDateTime),
    Column("last_updated", UTCDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    Column("exit_status", String(100)),  # migration 0006; NULL: the status's name
    Index("ix_step_execution_job_execution", "job_execution_id"),
)

step_context = Table(
    "batch_step_context",
    metadata,
    _reference(
        "instance_id", "batch_job_instance.id", "fk_step_context_instance", primary_key=True
    ),
    Column("step_name", String(200), primary_key=True),
    Column("context", Text, nullable=False),
)

# Every status change of a job or step execution (migration 0008), written in the transaction
# of the change. No foreign key: purge deletes the rows with their executions.
status_history = Table(
    "batch_status_history",
    metadata,
    _id(),
    Column("job_execution_id", Id, nullable=False),
    Column("step_execution_id", Id),
    Column("step_name", String(200)),
    Column("status", String(16), nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("node", String(255)),
    Column("message", Text),
    Index("ix_status_history_execution", "job_execution_id"),
)

# Daemon triggers (migration 0002). One row per schedule fire and per claimed file: the
# unique keys make each fire run, and each file start, at most once across restarts.
schedule_fire = Table(
    "batch_schedule_fire",
    metadata,
    _id(),
    Column("schedule_name", String(200), nullable=False),
    Column("fire_time", UTCDateTime, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("job_execution_id", Id),
    Column("message", Text),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("node", String(200)),  # migration 0003: the node that claimed the fire
    # Migration 0005: what a fire waiting for other jobs (outcome "waiting") will start,
    # what it waits for and until when; its deadline and whether it was met.
    Column("business_date", String(10)),
    Column("params", Text),
    Column("waits_for", Text),
    Column("wait_until", UTCDateTime),
    Column("deadline_at", UTCDateTime),
    Column("deadline_state", String(16)),
    UniqueConstraint("schedule_name", "fire_time", name="uq_schedule_fire"),
    Index("ix_schedule_fire_execution", "job_execution_id"),
    Index("ix_schedule_fire_outcome", "outcome"),
    Index("ix_schedule_fire_deadline", "deadline_state"),
)

trigger_file = Table(
    "batch_trigger_file",
    metadata,
    _id(),
    Column("watch_name", String(200), nullable=False),
    Column("file_name", String(1000), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("job_execution_id", Id),
    Column("reason", Text),
    Column("claimed_at", UTCDateTime, nullable=False),
    Column("node", String(200)),  # migration 0003: the node that claimed the file
    # Migration 0004: the claim is the durable intent, so that whoever finishes a claim its
    # taker left (it died) does what the taker meant: where the file goes in processed/, the
    # job's parameters (canonical JSON), and the newest execution id when it was claimed (an
    # execution of the job instance after that one is the one the claim started).
    Column("destination", Text),
    Column("params", Text),
    Column("execution_floor", Id),
    UniqueConstraint("watch_name", "file_name", "sha256", name="uq_trigger_file"),
    Index("ix_trigger_file_execution", "job_execution_id"),
    Index("ix_trigger_file_state", "state"),
)

# Daemons sharing the repository (migration 0003): one row per running node, renewed by
# its heartbeat and deleted when it stops cleanly.
node = Table(
    "batch_node",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat", UTCDateTime, nullable=False),
    # The node's clock minus the database's, as last measured.
    Column("clock_offset_ms", Integer, nullable=False, server_default="0"),
)
