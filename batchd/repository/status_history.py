"""The history of every status change of job and step executions (go-job's state history):
one row per transition, with its time and the node that made it, written in the transaction
of the change itself, so the history and the statuses can never disagree."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from batchd.model import BatchStatus
from batchd.repository.base import RepositoryBase
from batchd.repository.rows import same_named, shared_columns
from batchd.repository.tables import status_history


@dataclass(frozen=True)
class StatusChange:
    """One transition: of the job execution (``step_name`` None) or of one of its steps."""

    job_execution_id: int
    step_execution_id: int | None
    step_name: str | None
    status: BatchStatus
    time: datetime
    node: str | None
    message: str | None


# The columns that StatusChange's fields of the same name take as they are.
_SAME_NAMED = shared_columns(StatusChange, status_history, "status")

# Built once: constructing a Core statement costs more than executing it on SQLite.
_INSERT = insert(status_history)


def history_rows(
    changes: Sequence[tuple[int, int | None, str | None, BatchStatus]],
    *,
    at: datetime,
    node: str | None,
    message: str | None = None,
) -> list[dict[str, Any]]:
    """The status history rows of (job execution id, step execution id, step name, status)
    changes, for :func:`insert_history`."""
    first_line = message.splitlines()[0][:500] if message else None
    return [
        {
            "job_execution_id": job_id,
            "step_execution_id": step_id,
            "step_name": step_name,
            "status": status.value,
            "recorded_at": at,
            "node": node,
            "message": first_line,
        }
        for job_id, step_id, step_name, status in changes
    ]


def insert_history(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Add ``rows`` in ``conn``'s transaction (the one that changes the statuses): one
    statement, however many."""
    if rows:
        conn.execute(_INSERT, rows)


def record_changes(
    conn: Connection,
    changes: Sequence[tuple[int, int | None, str | None, BatchStatus]],
    *,
    at: datetime,
    node: str | None,
    message: str | None = None,
) -> None:
    """Add (job execution id, step execution id, step name, status) rows in ``conn``'s
    transaction (the one that changes the statuses)."""
    insert_history(conn, history_rows(changes, at=at, node=node, message=message))


class StatusHistory(RepositoryBase):
    """The status history part of :class:`batchd.repository.SqlJobRepository`."""

    #: The node recorded with the changes this process makes (the daemon sets its name).
    node: str | None = socket.gethostname()

    def status_history(self, execution_id: int) -> list[StatusChange]:
        """Every status change of the execution and its steps, oldest first."""
        with self.reading() as conn:
            rows = conn.execute(
                select(status_history)
                .where(status_history.c.job_execution_id == execution_id)
                .order_by(status_history.c.id)
            ).mappings()
            return [
                StatusChange(
                    status=BatchStatus(row["status"]),
                    time=row["recorded_at"],
                    **same_named(row, _SAME_NAMED),
                )
                for row in rows
            ]
