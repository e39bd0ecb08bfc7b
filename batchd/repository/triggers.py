"""What the daemon's triggers record: schedule fires and claimed files.

Both are claimed by an INSERT that a unique key lets succeed once, so a fire runs and a
file starts a job at most once, across daemon restarts and across daemons sharing the
repository.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from batchd.repository.job_repository import SqlJobRepository
from batchd.repository.tables import schedule_fire, trigger_file


class TriggerStore:
    """Schedule fires and trigger files, in the job repository's database."""

    def __init__(self, repository: SqlJobRepository, node: str | None = None) -> None:
        self.repository = repository
        self.engine = repository.engine
        self.node = node  # recorded with each claim

    # -------------------------------------------------------------- schedules

    def record_fire(self, schedule: str, fire_time: datetime) -> bool:
        """Claim this fire; False when it was recorded before (it already ran)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(schedule_fire).values(
                        schedule_name=schedule,
                        fire_time=fire_time,
                        outcome="claimed",
                        recorded_at=self.repository.clock(),
                        node=self.node,
                    )
                )
        except IntegrityError:
            return False
        return True

    def set_fire_outcome(
        self,
        schedule: str,
        fire_time: datetime,
        outcome: str,
        execution_id: int | None = None,
        message: str | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(schedule_fire)
                .where(
                    schedule_fire.c.schedule_name == schedule,
                    schedule_fire.c.fire_time == fire_time,
                )
                .values(outcome=outcome, job_execution_id=execution_id, message=message)
            )

    def fire_node(self, schedule: str, fire_time: datetime) -> str | None:
        """The node that claimed this fire (None if unknown or not claimed)."""
        with self.repository.reading() as conn:
            value: str | None = conn.execute(
                select(schedule_fire.c.node).where(
                    schedule_fire.c.schedule_name == schedule,
                    schedule_fire.c.fire_time == fire_time,
                )
            ).scalar_one_or_none()
        return value

    def last_fire(self, schedule: str) -> datetime | None:
        """The newest recorded fire time of ``schedule`` (aware UTC), or None."""
        with self.repository.reading() as conn:
            value: datetime | None = conn.execute(
                select(func.max(schedule_fire.c.fire_time)).where(
                    schedule_fire.c.schedule_name == schedule
                )
            ).scalar_one_or_none()
        return value

    def fires(self, schedule: str) -> list[dict[str, Any]]:
        """Every recorded fire of ``schedule``, oldest first."""
        with self.repository.reading() as conn:
            rows = conn.execute(
                select(schedule_fire)
                .where(schedule_fire.c.schedule_name == schedule)
                .order_by(schedule_fire.c.fire_time)
            ).mappings()
            return [dict(row) for row in rows]

    # ------------------------------------------------------------------ files

    def claim_file(self, watch: str, name: str, sha256: str) -> int | None:
        """Claim a file; its claim id, or None when this name + content was taken before."""
        try:
            with self.engine.begin() as conn:
                result = conn.execute(
                    insert(trigger_file).values(
                        watch_name=watch,
                        file_name=name,
                        sha256=sha256,
                        state="claimed",
                        claimed_at=self.repository.clock(),
                        node=self.node,
                    )
                )
        except IntegrityError:
            return None
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def finish_file(
        self,
        claim_id: int,
        state: str,
        execution_id: int | None = None,
        reason: str | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(trigger_file)
                .where(trigger_file.c.id == claim_id)
                .values(state=state, job_execution_id=execution_id, reason=reason)
            )

    def file_claim(self, watch: str, name: str, sha256: str) -> dict[str, Any] | None:
        with self.repository.reading() as conn:
            row = (
                conn.execute(
                    select(trigger_file).where(
                        trigger_file.c.watch_name == watch,
                        trigger_file.c.file_name == name,
                        trigger_file.c.sha256 == sha256,
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row is not None else None

    # ------------------------------------------------- claims of nodes that died

    def stale_fire_claims(self, before: datetime) -> list[tuple[str, datetime, datetime]]:
        """Fires claimed before ``before`` whose job was never started (the claiming node
        died in between): (schedule, fire time, claim time)."""
        with self.repository.reading() as conn:
            rows = conn.execute(
                select(
                    schedule_fire.c.schedule_name,
                    schedule_fire.c.fire_time,
                    schedule_fire.c.recorded_at,
                ).where(schedule_fire.c.outcome == "claimed", schedule_fire.c.recorded_at < before)
            ).all()
        return [(row[0], row[1], row[2]) for row in rows]

    def take_fire_claim(self, schedule: str, fire_time: datetime, claimed_at: datetime) -> bool:
        """Take over a stale fire claim; True for exactly one of the nodes that try."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(schedule_fire)
                .where(
                    schedule_fire.c.schedule_name == schedule,
                    schedule_fire.c.fire_time == fire_time,
                    schedule_fire.c.outcome == "claimed",
                    schedule_fire.c.recorded_at == claimed_at,
                )
                .values(recorded_at=self.repository.clock(), node=self.node)
            ).rowcount
        return changed == 1

    # ------------------------------------------------------------ crash restarts

    def trigger_of(self, execution_id: int) -> tuple[str, str] | None:
        """What started an execution: ("schedule", name), ("watch", name) or None."""
        with self.repository.reading() as conn:
            schedule = conn.execute(
                select(schedule_fire.c.schedule_name).where(
                    schedule_fire.c.job_execution_id == execution_id
                )
            ).first()
            if schedule is not None:
                return "schedule", schedule[0]
            watch = conn.execute(
                select(trigger_file.c.watch_name).where(
                    trigger_file.c.job_execution_id == execution_id
                )
            ).first()
        return ("watch", watch[0]) if watch is not None else None

    def move_trigger(self, old_execution_id: int, new_execution_id: int) -> None:
        """A restart after a crash now stands for the fire or file of ``old_execution_id``."""
        with self.engine.begin() as conn:
            for table in (schedule_fire, trigger_file):
                conn.execute(
                    update(table)
                    .where(table.c.job_execution_id == old_execution_id)
                    .values(job_execution_id=new_execution_id)
                )
