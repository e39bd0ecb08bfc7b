"""Whether the owners of running executions are alive: their heartbeats, and the executions
crash recovery finds stale (a part of :class:`batchd.repository.SqlJobRepository`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta

from sqlalchemy import select, update

from batchd.model import BatchStatus, JobExecution
from batchd.repository.base import RUNNING, RepositoryBase
from batchd.repository.tables import job_execution


class Liveness(RepositoryBase):
    """Heartbeats and stale executions."""

    def running_executions(self) -> list[JobExecution]:
        raise NotImplementedError  # SqlJobRepository's

    def heartbeat(self, execution_ids: Sequence[int]) -> dict[int, BatchStatus]:
        """Record that the owner of these executions is alive; return their statuses
        (so the owner sees a stop requested by another process)."""
        if not execution_ids:
            return {}
        now = self.clock()
        ids = list(execution_ids)
        with self.engine.begin() as conn:
            conn.execute(
                update(job_execution)
                .where(job_execution.c.id.in_(ids), job_execution.c.status.in_(RUNNING))
                .values(heartbeat=now)
            )
            rows = conn.execute(
                select(job_execution.c.id, job_execution.c.status).where(
                    job_execution.c.id.in_(ids)
                )
            ).all()
        return {row.id: BatchStatus(row.status) for row in rows}

    def stale_executions(
        self,
        lease: timedelta,
        *,
        host: str,
        is_alive: Callable[[int], bool],
        trust_heartbeats: bool = True,
    ) -> Iterable[tuple[JobExecution, str]]:
        """Running executions whose owner is gone, with the reason why we think so: a
        process of ``host`` that is not alive, or (``trust_heartbeats``) a heartbeat older
        than ``lease``."""
        cutoff = self.clock() - lease
        for execution in self.running_executions():
            owner_pid = execution.owner_pid
            if execution.owner_host == host and owner_pid is not None and not is_alive(owner_pid):
                yield execution, f"recovered: owner process {owner_pid} on {host} is gone"
                continue
            if not trust_heartbeats:
                continue
            if execution.heartbeat is None or execution.heartbeat < cutoff:
                last_beat = execution.heartbeat.isoformat() if execution.heartbeat else "ever"
                owner = f"{execution.owner_host}:{execution.owner_pid}"
                yield (
                    execution,
                    f"recovered: no heartbeat from {owner} since {last_beat}"
                    f" (lease {lease.total_seconds():g}s)",
                )
