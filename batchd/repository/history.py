"""What the job repository says of its history: job summaries for the metrics, and
purging what ended long ago."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, func, select

from batchd.model import BatchStatus
from batchd.repository.base import RUNNING, RepositoryBase, batches
from batchd.repository.tables import (
    job_execution,
    job_execution_context,
    job_instance,
    status_history,
    step_context,
    step_execution,
)

log = logging.getLogger(__name__)


class HistoryQueries(RepositoryBase):
    """The history part of :class:`batchd.repository.SqlJobRepository`."""

    def job_summaries(self) -> list[JobSummary]:
        """One :class:`JobSummary` per job name that has executions: the status of the
        execution that ended last, the end of its newest COMPLETED execution, its running
        executions and every status its ended executions have had. A few grouped queries
        (no history is loaded): what the metrics' job gauges start from."""
        ended = job_execution.c.status.not_in(RUNNING)
        last_end = (
            select(
                job_execution.c.job_name.label("job_name"),
                func.max(job_execution.c.end_time).label("end_time"),
            )
            .where(ended)
            .group_by(job_execution.c.job_name)
            .subquery()
        )
        with self.reading() as conn:
            last_rows = conn.execute(
                select(
                    job_execution.c.job_name,
                    job_execution.c.id,
                    job_execution.c.status,
                    job_execution.c.end_time,
                )
                .select_from(
                    job_execution.join(
                        last_end,
                        and_(
                            job_execution.c.job_name == last_end.c.job_name,
                            job_execution.c.end_time == last_end.c.end_time,
                        ),
                    )
                )
                .where(ended)
            ).all()
            success_rows = conn.execute(
                select(job_execution.c.job_name, func.max(job_execution.c.end_time))
                .where(job_execution.c.status == BatchStatus.COMPLETED.value)
                .group_by(job_execution.c.job_name)
            ).all()
            status_rows = conn.execute(
                select(job_execution.c.job_name, job_execution.c.status).where(ended).distinct()
            ).all()
            running_rows = conn.execute(
                select(job_execution.c.job_name, job_execution.c.id).where(
                    job_execution.c.status.in_(RUNNING)
                )
            ).all()
        last: dict[str, tuple[datetime, int, BatchStatus]] = {}
        for name, execution_id, status, end_time in last_rows:
            candidate = (end_time, execution_id, BatchStatus(status))
            if name not in last or candidate[:2] > last[name][:2]:
                last[name] = candidate  # equal end times: the newer execution
        success = {name: end_time for name, end_time in success_rows}
        statuses: dict[str, set[BatchStatus]] = {}
        for name, status in status_rows:
            statuses.setdefault(name, set()).add(BatchStatus(status))
        running: dict[str, list[int]] = {}
        for name, execution_id in running_rows:
            running.setdefault(name, []).append(execution_id)
        names = sorted(set(last) | set(success) | set(statuses) | set(running))
        return [
            JobSummary(
                job_name=name,
                last_status=last[name][2] if name in last else None,
                last_end_time=last[name][0] if name in last else None,
                last_execution_id=last[name][1] if name in last else None,
                last_success_time=success.get(name),
                running_ids=tuple(sorted(running.get(name, ()))),
                statuses=frozenset(statuses.get(name, ())),
            )
            for name in names
        ]

    # ------------------------------------------------------------------ history

    def purge(self, before: datetime, *, dry_run: bool = False) -> PurgeResult:
        """Delete the history that ended before ``before``: executions (with their step
        executions and job contexts) of *complete* instances, and then the instances (with
        their step contexts) that have no execution left.

        An instance is complete when its last execution is COMPLETED or ABANDONED: it can
        never run again, so its history is only history. Nothing of an instance that can
        still be restarted (or is running) is ever deleted, whatever its age: restart needs
        the checkpoints and step counts. Schedule fires and claimed trigger files are kept
        (they are what stops a fire or a file from starting twice). ``dry_run`` counts
        without deleting.
        """
        final = [BatchStatus.COMPLETED.value, BatchStatus.ABANDONED.value]
        # Aliases: the subqueries must not correlate with the outer query's job_execution.
        newest, last = job_execution.alias("newest"), job_execution.alias("last")
        last_ids = select(func.max(newest.c.id)).group_by(newest.c.instance_id)
        complete_instances = select(last.c.instance_id).where(
            last.c.id.in_(last_ids), last.c.status.in_(final)
        )
        ended = func.coalesce(job_execution.c.end_time, job_execution.c.last_updated)
        with self.engine.begin() as conn:
            execution_ids = list(
                conn.execute(
                    select(job_execution.c.id, job_execution.c.instance_id).where(
                        job_execution.c.instance_id.in_(complete_instances),
                        job_execution.c.status.not_in(RUNNING),
                        ended < before,
                    )
                ).all()
            )
            ids = [row.id for row in execution_ids]
            touched = sorted({row.instance_id for row in execution_ids})
            counts = PurgeResult(executions=len(ids))
            for batch in batches(ids):
                counts.step_executions += conn.execute(
                    select(func.count())
                    .select_from(step_execution)
                    .where(step_execution.c.job_execution_id.in_(batch))
                ).scalar_one()
                if not dry_run:
                    conn.execute(
                        delete(step_execution).where(step_execution.c.job_execution_id.in_(batch))
                    )
                    conn.execute(
                        delete(job_execution_context).where(
                            job_execution_context.c.job_execution_id.in_(batch)
                        )
                    )
                    conn.execute(
                        delete(status_history).where(status_history.c.job_execution_id.in_(batch))
                    )
                    conn.execute(delete(job_execution).where(job_execution.c.id.in_(batch)))
            purged_set = set(ids)
            for batch in batches(touched):
                remaining = conn.execute(
                    select(job_execution.c.instance_id, job_execution.c.id).where(
                        job_execution.c.instance_id.in_(batch)
                    )
                ).all()
                alive = {row.instance_id for row in remaining if row.id not in purged_set}
                empty = [instance_id for instance_id in batch if instance_id not in alive]
                counts.instances += len(empty)
                if dry_run or not empty:
                    continue
                conn.execute(delete(step_context).where(step_context.c.instance_id.in_(empty)))
                # Only if still empty: a start that found the instance meanwhile keeps it.
                has_execution = (
                    select(job_execution.c.id)
                    .where(job_execution.c.instance_id == job_instance.c.id)
                    .exists()
                )
                conn.execute(
                    delete(job_instance).where(job_instance.c.id.in_(empty), ~has_execution)
                )
        log.info(
            "%s %d job executions (%d step executions) and %d instances that ended before %s",
            "would purge" if dry_run else "purged",
            counts.executions,
            counts.step_executions,
            counts.instances,
            before.isoformat(),
        )
        return counts


@dataclass
class PurgeResult:
    """What :meth:`SqlJobRepository.purge` deleted (or, in a dry run, would delete)."""

    executions: int = 0
    step_executions: int = 0
    instances: int = 0


@dataclass(frozen=True)
class JobSummary:
    """What :meth:`SqlJobRepository.job_summaries` says about one job."""

    job_name: str
    #: Status, end and id of the execution that ended last (None: none has ended).
    last_status: BatchStatus | None
    last_end_time: datetime | None
    last_execution_id: int | None
    #: End of the newest COMPLETED execution (None: never completed).
    last_success_time: datetime | None
    #: Executions STARTING, STARTED or STOPPING now (in any process).
    running_ids: tuple[int, ...]
    #: Every status the job's ended executions have had.
    statuses: frozenset[BatchStatus]
