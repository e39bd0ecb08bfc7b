"""What the daemon's triggers record: schedule fires and claimed files.

Both are claimed by an INSERT that a unique key lets succeed once, so a fire runs and a
file starts a job at most once, across daemon restarts and across daemons sharing the
repository.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, Select, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from batchd.model.params import canonical_json
from batchd.repository.job_repository import SqlJobRepository
from batchd.repository.rows import same_named, shared_columns
from batchd.repository.tables import job_execution, job_instance, schedule_fire, trigger_file

# The newest execution id when a claim is made: executions of its job instance above it
# were started after the claim.
_EXECUTION_FLOOR = select(func.coalesce(func.max(job_execution.c.id), 0)).scalar_subquery()


@dataclass(frozen=True)
class FileClaim:
    """One row of ``batch_trigger_file``: a file claimed by a watch. ``state`` is
    ``claimed`` until its taker finishes it ``started``, ``rejected`` or ``error``;
    (``node``, ``claimed_at``) say who holds it since when, and change when it is taken
    over. ``destination``, ``params`` and ``execution_floor`` are what the taker meant
    (None for claims made before batchd recorded them); ``reason`` on a claim still
    ``claimed`` means its job was refused and the file is being rejected."""

    id: int
    watch: str
    name: str
    sha256: str
    state: str
    node: str | None
    claimed_at: datetime
    execution_id: int | None
    reason: str | None
    destination: str | None
    params: dict[str, Any] | None
    execution_floor: int | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> FileClaim:
        claimed_at = row["claimed_at"]
        if claimed_at.tzinfo is None:
            claimed_at = claimed_at.replace(tzinfo=UTC)
        return cls(
            id=int(row["id"]),
            watch=row["watch_name"],
            name=row["file_name"],
            claimed_at=claimed_at,
            execution_id=row["job_execution_id"],
            params=json.loads(row["params"]) if row["params"] is not None else None,
            **same_named(row, _CLAIM_COLUMNS),
        )


@dataclass(frozen=True)
class RecordedFire:
    """A fire's row as the scheduler's periodic pass reads it: a fire ``waiting`` for
    other jobs (``waits_for``: ``[{"job", "params"}]``, given up after ``wait_until``), or
    one whose deadline (``deadline_at``) is ``pending`` or ``missed``."""

    schedule: str
    fire_time: datetime
    outcome: str
    business_date: str | None
    params: dict[str, Any] | None
    waits_for: list[dict[str, Any]]
    wait_until: datetime | None
    deadline_at: datetime | None
    deadline_state: str | None
    execution_id: int | None

    @classmethod
    def of(cls, row: Any) -> RecordedFire:
        return cls(
            schedule=row["schedule_name"],
            params=json.loads(row["params"]) if row["params"] is not None else None,
            waits_for=json.loads(row["waits_for"]) if row["waits_for"] is not None else [],
            execution_id=row["job_execution_id"],
            **same_named(row, _FIRE_COLUMNS),
        )

    def view(self) -> dict[str, Any]:
        """As the control socket lists it (times ISO 8601 UTC)."""
        return {
            "fire_time": self.fire_time.astimezone(UTC).isoformat(),
            "business_date": self.business_date,
            "params": self.params,
            "waits_for": self.waits_for,
            "wait_until": self.wait_until.isoformat() if self.wait_until else None,
        }


# The columns that FileClaim's and RecordedFire's fields of the same name take as they are.
_CLAIM_COLUMNS = shared_columns(FileClaim, trigger_file, "id", "claimed_at", "params")
_FIRE_COLUMNS = shared_columns(RecordedFire, schedule_fire, "params", "waits_for")


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _contains(params: Any, wanted: dict[str, Any]) -> bool:
    """Whether parameters hold every key of ``wanted`` with that very value."""
    return isinstance(params, dict) and all(
        key in params and params[key] == value for key, value in wanted.items()
    )


def _fire_key(schedule: str, fire_time: datetime) -> tuple[ColumnElement[bool], ...]:
    return (schedule_fire.c.schedule_name == schedule, schedule_fire.c.fire_time == fire_time)


def _unchanged(claim: FileClaim) -> tuple[ColumnElement[bool], ...]:
    """The claim row as it was read: same state, holder and time (compare-and-set)."""
    node = trigger_file.c.node
    return (
        trigger_file.c.id == claim.id,
        trigger_file.c.state == claim.state,
        trigger_file.c.claimed_at == claim.claimed_at,
        node.is_(None) if claim.node is None else node == claim.node,
    )


class TriggerStore:
    """Schedule fires and trigger files, in the job repository's database."""

    def __init__(self, repository: SqlJobRepository, node: str | None = None) -> None:
        self.repository = repository
        self.engine = repository.engine
        self.node = node  # recorded with each claim

    # -------------------------------------------------------------- schedules

    def record_fire(
        self,
        schedule: str,
        fire_time: datetime,
        *,
        business_date: str | None = None,
        params: dict[str, Any] | None = None,
        waits_for: list[dict[str, Any]] | None = None,
        wait_until: datetime | None = None,
        deadline_at: datetime | None = None,
    ) -> bool:
        """Claim this fire; False when it was recorded before (it already ran). With
        ``waits_for`` the fire is recorded ``waiting`` instead of claimed: whichever node
        sees its dependencies complete first claims it (:meth:`claim_waiting_fire`)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(schedule_fire).values(
                        schedule_name=schedule,
                        fire_time=fire_time,
                        outcome="waiting" if waits_for else "claimed",
                        recorded_at=self.repository.clock(),
                        node=self.node,
                        business_date=business_date,
                        params=canonical_json(params) if params is not None else None,
                        waits_for=canonical_json(waits_for) if waits_for else None,
                        wait_until=wait_until,
                        deadline_at=deadline_at,
                        deadline_state="pending" if deadline_at is not None else None,
                    )
                )
        except IntegrityError:
            return False
        return True

    def recorded_fire(self, schedule: str, fire_time: datetime) -> RecordedFire | None:
        with self.repository.reading() as conn:
            row = conn.execute(select(schedule_fire).where(*_fire_key(schedule, fire_time)))
            found = row.mappings().first()
        return RecordedFire.of(found) if found is not None else None

    def _rows(self, query: Select[Any]) -> Sequence[RowMapping]:
        with self.repository.reading() as conn:
            return conn.execute(query).mappings().all()

    def waiting_fires(self) -> list[RecordedFire]:
        """Every fire still waiting for its dependencies, oldest first (an indexed query:
        every node runs it about once a second)."""
        query = select(schedule_fire).where(schedule_fire.c.outcome == "waiting")
        rows = self._rows(query.order_by(schedule_fire.c.fire_time))
        return [RecordedFire.of(row) for row in rows]

    def end_waiting_fire(self, schedule: str, fire_time: datetime, outcome: str) -> bool:
        """Move a waiting fire on, if it still waits (compare-and-set): to ``claimed`` by
        this node (to start its job) or to a final outcome (``dependency_timeout``). True
        for exactly one of the nodes that try."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(schedule_fire)
                .where(*_fire_key(schedule, fire_time), schedule_fire.c.outcome == "waiting")
                .values(outcome=outcome, recorded_at=self.repository.clock(), node=self.node)
            ).rowcount
        return changed == 1

    def completed_with(
        self, job: str, params: dict[str, Any], *, by: datetime | None = None
    ) -> bool:
        """Whether an execution of ``job`` whose parameters contain ``params`` COMPLETED
        (and ended no later than ``by``, if given)."""
        query = select(job_execution.c.params).where(
            job_execution.c.job_name == job, job_execution.c.status == "COMPLETED"
        )
        if by is not None:
            query = query.where(job_execution.c.end_time <= by)
        # Canonical JSON holds each key/value as the same text: narrow with LIKE, then check.
        for key, value in params.items():
            fragment = _like_escaped(canonical_json({key: value})[1:-1])
            query = query.where(job_execution.c.params.like(literal(f"%{fragment}%"), escape="\\"))
        with self.repository.reading() as conn:
            for (text,) in conn.execute(query.order_by(job_execution.c.id.desc())):
                if _contains(json.loads(text), params):
                    return True
        return False

    def open_deadlines(self) -> list[RecordedFire]:
        """Fires whose deadline is ``pending`` (not yet known to be met) or ``missed`` (and
        their job not completed since)."""
        query = select(schedule_fire).where(
            schedule_fire.c.deadline_state.in_(("pending", "missed"))
        )
        return [RecordedFire.of(row) for row in self._rows(query)]

    def set_deadline_state(self, fire: RecordedFire, state: str) -> bool:
        """Compare-and-set the deadline state: True for exactly one node that tries."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(schedule_fire)
                .where(
                    *_fire_key(fire.schedule, fire.fire_time),
                    schedule_fire.c.deadline_state == fire.deadline_state,
                )
                .values(deadline_state=state)
            ).rowcount
        return changed == 1

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
                .where(*_fire_key(schedule, fire_time))
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
        query = select(schedule_fire).where(schedule_fire.c.schedule_name == schedule)
        return [dict(row) for row in self._rows(query.order_by(schedule_fire.c.fire_time))]

    # ------------------------------------------------------------------ files

    def claim_file(
        self,
        watch: str,
        name: str,
        sha256: str,
        *,
        destination: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> FileClaim | None:
        """Claim a file, recording where it goes and the job's parameters; the claim, or
        None when this name + content was claimed before."""
        claim = insert(trigger_file).values(
            watch_name=watch,
            file_name=name,
            sha256=sha256,
            state="claimed",
            claimed_at=self.repository.clock(),
            node=self.node,
            destination=destination,
            params=canonical_json(params) if params is not None else None,
            execution_floor=_EXECUTION_FLOOR,
        )
        try:
            with self.engine.begin() as conn:
                if conn.dialect.insert_returning:
                    # The row as stored, from the INSERT itself: no read after the commit
                    # on the way from a dropped file to its job.
                    row = conn.execute(claim.returning(trigger_file)).mappings().one()
                    return FileClaim.of(dict(row))
                result = conn.execute(claim)
        except IntegrityError:
            return None
        key = result.inserted_primary_key
        assert key is not None
        return self._claim_by_id(int(key[0]))

    def file_claim(self, watch: str, name: str, sha256: str) -> dict[str, Any] | None:
        """The claim row of a file (as a dict), or None."""
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

    def claim_of_file(self, watch: str, name: str, sha256: str) -> FileClaim | None:
        row = self.file_claim(watch, name, sha256)
        return FileClaim.of(row) if row is not None else None

    def _claim_by_id(self, claim_id: int) -> FileClaim:
        with self.repository.reading() as conn:
            row = conn.execute(select(trigger_file).where(trigger_file.c.id == claim_id))
            return FileClaim.of(dict(row.mappings().one()))

    def unfinished_file_claims(self) -> list[FileClaim]:
        """Every claim still ``claimed``: being taken, or left by a taker that died."""
        query = (
            select(trigger_file)
            .where(trigger_file.c.state == "claimed")
            .order_by(trigger_file.c.id)
        )
        return [FileClaim.of(dict(row)) for row in self._rows(query)]

    def take_file_claim(
        self,
        claim: FileClaim,
        *,
        destination: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> FileClaim | None:
        """Make ``claim`` this node's, if nobody changed it since it was read: the taken
        claim, or None (another node took it first). A claim that ended in ``error`` is
        taken again from scratch, with its new ``destination`` and ``params``; one left
        ``claimed`` keeps what its taker meant."""
        values: dict[str, Any] = {"node": self.node, "claimed_at": self.repository.clock()}
        if claim.state != "claimed":
            values.update(
                state="claimed",
                job_execution_id=None,
                reason=None,
                destination=destination,
                params=canonical_json(params) if params is not None else None,
                execution_floor=_EXECUTION_FLOOR,
            )
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(trigger_file).where(*_unchanged(claim)).values(**values)
            ).rowcount
        return self._claim_by_id(claim.id) if changed == 1 else None

    def refuse_file(self, claim: FileClaim, reason: str) -> bool:
        """Record that the claimed file's job was refused (the file is to be rejected with
        ``reason``); False if the claim is no longer this taker's."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(trigger_file).where(*_unchanged(claim)).values(reason=reason)
            ).rowcount
        return changed == 1

    def finish_file(
        self,
        claim: FileClaim,
        state: str,
        execution_id: int | None = None,
        reason: str | None = None,
    ) -> bool:
        """Finish a claim (``started``, ``rejected`` or ``error``); False if it is no longer
        this taker's (another node took it over), and then nothing is changed."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(trigger_file)
                .where(*_unchanged(claim))
                .values(state=state, job_execution_id=execution_id, reason=reason)
            ).rowcount
        return changed == 1

    def execution_after(self, job_name: str, job_key: str, floor: int | None) -> int | None:
        """The first execution of the job instance (``job_name``, ``job_key``) with an id
        above ``floor``: the execution a claim made when ``floor`` was newest started."""
        with self.repository.reading() as conn:
            value: int | None = conn.execute(
                select(func.min(job_execution.c.id))
                .select_from(
                    job_execution.join(
                        job_instance, job_instance.c.id == job_execution.c.instance_id
                    )
                )
                .where(
                    job_instance.c.job_name == job_name,
                    job_instance.c.job_key == job_key,
                    job_execution.c.id > (floor or 0),
                )
            ).scalar_one_or_none()
        return value

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
