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

    def __init__(self, repository: SqlJobRepository) -> None:
        self.repository = repository
        self.engine = repository.engine

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
