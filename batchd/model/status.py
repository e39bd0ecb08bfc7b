"""Execution statuses and how they combine."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class BatchStatus(StrEnum):
    """Status of a job or step execution. The value equals the name (``"COMPLETED"``)."""

    STARTING = "STARTING"
    STARTED = "STARTED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ABANDONED = "ABANDONED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_running(self) -> bool:
        return self in RUNNING_STATUSES

    @property
    def is_restartable(self) -> bool:
        """Whether an instance whose last execution has this status may be restarted."""
        return self in RESTARTABLE_STATUSES

    @classmethod
    def worst(cls, statuses: Iterable[BatchStatus]) -> BatchStatus:
        """Combine statuses the way a job combines its steps: the worst one wins.
        An empty iterable is COMPLETED (nothing went wrong)."""
        return max(statuses, key=_SEVERITY.__getitem__, default=cls.COMPLETED)


# The order in which statuses combine (DESIGN §3): later is worse.
_SEVERITY = {
    status: rank
    for rank, status in enumerate(
        [
            BatchStatus.COMPLETED,
            BatchStatus.STARTING,
            BatchStatus.STARTED,
            BatchStatus.STOPPING,
            BatchStatus.STOPPED,
            BatchStatus.FAILED,
            BatchStatus.ABANDONED,
            BatchStatus.UNKNOWN,
        ]
    )
}

RUNNING_STATUSES = frozenset({BatchStatus.STARTING, BatchStatus.STARTED, BatchStatus.STOPPING})
RESTARTABLE_STATUSES = frozenset({BatchStatus.STOPPED, BatchStatus.FAILED, BatchStatus.UNKNOWN})
