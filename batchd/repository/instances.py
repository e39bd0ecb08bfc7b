"""Job instances in the job repository: found or created, and locked, in the transaction
that adds an execution to one (a part of :class:`batchd.repository.SqlJobRepository`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from batchd.model import JobInstance, canonical_json
from batchd.repository.base import RepositoryBase, dialect_insert
from batchd.repository.connect import MYSQL_BACKENDS
from batchd.repository.rows import to_instance
from batchd.repository.tables import job_instance

# Built once: constructing a Core statement costs more than executing it on SQLite.
_LOCK = (
    update(job_instance)
    .where(job_instance.c.id == bindparam("b_id"))
    .values(version=job_instance.c.version + 1)
)
_ID = select(job_instance.c.id).where(
    job_instance.c.job_name == bindparam("b_name"), job_instance.c.job_key == bindparam("b_key")
)
_BY_ID = select(job_instance).where(job_instance.c.id == bindparam("b_id"))
_BY_KEY = select(job_instance).where(
    job_instance.c.job_name == bindparam("b_name"), job_instance.c.job_key == bindparam("b_key")
)
_UPSERT: dict[str, Any] = {}  # by dialect name


def find_or_create_instance(
    conn: Connection,
    job_name: str,
    job_key: str,
    identifying_params: dict[str, Any],
    now: datetime,
) -> tuple[int, bool]:
    """The id of the instance, locked until ``conn``'s transaction ends (concurrent creators
    of executions of one instance queue here), and True if it certainly was created just
    now (then it has no execution yet).

    Where INSERT has RETURNING (not MySQL's ON DUPLICATE KEY), one statement: an insert
    whose conflict bumps the row's version, which locks the row as the UPDATE of the other
    path does. A row the statement inserted has version 0; one it found has more. The other
    path says False: MySQL counts a duplicate key as a changed row."""
    values = {
        "job_name": job_name,
        "job_key": job_key,
        "params": canonical_json(identifying_params),
        "create_time": now,
        "version": 0,
    }
    name = conn.dialect.name
    returning = conn.dialect.insert_returning and name not in MYSQL_BACKENDS
    upsert = _UPSERT.get(name)
    if upsert is None:
        stmt = dialect_insert(conn)(job_instance)
        if returning:
            upsert = stmt.on_conflict_do_update(
                index_elements=["job_name", "job_key"],
                set_={"version": job_instance.c.version + 1},
            ).returning(job_instance.c.id, job_instance.c.version)
        else:
            upsert = stmt.on_conflict_do_nothing(index_elements=["job_name", "job_key"])
        _UPSERT[name] = upsert
    if returning:
        instance_id, version = conn.execute(upsert, values).one()
        return int(instance_id), version == 0
    conn.execute(upsert, values)
    instance_id = conn.execute(_ID, {"b_name": job_name, "b_key": job_key}).scalar_one()
    conn.execute(_LOCK, {"b_id": instance_id})
    return int(instance_id), False


class InstanceQueries(RepositoryBase):
    """Reading job instances."""

    def get_instance(self, instance_id: int) -> JobInstance | None:
        with self.reading() as conn:
            row = conn.execute(_BY_ID, {"b_id": instance_id}).mappings().first()
        return to_instance(row) if row is not None else None

    def find_instance(self, job_name: str, job_key: str) -> JobInstance | None:
        with self.reading() as conn:
            row = conn.execute(_BY_KEY, {"b_name": job_name, "b_key": job_key}).mappings().first()
        return to_instance(row) if row is not None else None

    def job_names(self) -> list[str]:
        """Every job name the repository has an instance of."""
        with self.reading() as conn:
            return list(conn.execute(select(job_instance.c.job_name).distinct()).scalars())
