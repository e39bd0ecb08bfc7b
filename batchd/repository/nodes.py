"""Daemons sharing one repository: who is running, and one clock for all of them.

Every node registers a row in ``batch_node`` and renews its heartbeat; ``batchd ctl nodes``
lists them. Times that other nodes compare (execution heartbeats, leases, claims) are taken
from :class:`DatabaseClock`: the node's clock corrected by its measured offset to the
database's, so a node whose clock is wrong is neither recovered while alive nor slow to
recover others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from batchd.errors import NodeConflict as NodeConflict
from batchd.repository.connect import MYSQL_BACKENDS
from batchd.repository.job_repository import SqlJobRepository, utc_now
from batchd.repository.tables import node as node_table

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class NodeRecord:
    """A row of ``batch_node``."""

    name: str
    host: str
    pid: int
    started_at: datetime
    heartbeat: datetime
    clock_offset: float  # seconds: the node's clock minus the database's

    def is_live(self, now: datetime, lease: timedelta) -> bool:
        return self.heartbeat >= now - lease


class DatabaseClock:
    """A clock that reads ``base()`` (the machine's clock) plus the offset to the database's
    clock measured by :meth:`measure`. Calls are cheap: the database is read only by
    :meth:`measure`."""

    def __init__(self, base: Clock = utc_now) -> None:
        self.base = base
        self.offset = timedelta(0)  # database clock minus base clock
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        return self.base() + self.offset

    def measure(self, repository: SqlJobRepository) -> timedelta:
        """Read the database's clock; returns (and keeps) its offset to the base clock."""
        before = self.base()
        started = time.monotonic()
        with repository.reading() as conn:
            database_now = _database_now(conn)
        # The database read its clock somewhere in the round trip: assume the middle.
        local = before + timedelta(seconds=(time.monotonic() - started) / 2)
        with self._lock:
            self.offset = database_now - local
        return self.offset

    @property
    def skew_seconds(self) -> float:
        """How far the machine's clock is ahead of the database's (negative: behind)."""
        return -self.offset.total_seconds()


def _database_now(conn: Connection) -> datetime:
    if conn.dialect.name == "postgresql":
        value = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        return value.astimezone(UTC)  # type: ignore[no-any-return]
    if conn.dialect.name in MYSQL_BACKENDS:
        value = conn.execute(text("SELECT UTC_TIMESTAMP(6)")).scalar_one()
        return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
    # SQLite runs in this process: its clock is the machine's.
    raw = conn.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
    return datetime.fromisoformat(raw).replace(tzinfo=UTC)


@contextmanager
def _one_at_a_time(conn: Connection) -> Iterator[None]:
    """On MySQL, one registration at a time: a named lock of the session, held until after
    the commit (PostgreSQL locks the table in the transaction; SQLite's write transactions
    already are one at a time)."""
    if conn.dialect.name not in MYSQL_BACKENDS:
        yield
        return
    from batchd.repository import mysql

    lock = {"name": mysql.NODE_LOCK, "timeout": mysql.LOCK_TIMEOUT_SECONDS}
    if conn.execute(text("SELECT GET_LOCK(:name, :timeout)"), lock).scalar_one() != 1:
        raise NodeConflict(f"another node has been registering for {lock['timeout']}s")
    conn.commit()
    try:
        yield
    finally:
        conn.execute(text("SELECT RELEASE_LOCK(:name)"), lock)
        conn.commit()


class NodeStore:
    """The ``batch_node`` rows: register, renew, list, leave."""

    def __init__(self, repository: SqlJobRepository) -> None:
        self.repository = repository

    def register(
        self,
        name: str,
        host: str,
        pid: int,
        *,
        lease: timedelta,
        is_alive: Callable[[int], bool],
        clock_offset: float = 0.0,
    ) -> None:
        """Add this node, or take over its row from a dead predecessor. NodeConflict when a
        live node has the name — or, on SQLite, when any other live node uses the file."""
        now = self.repository.clock()
        try:
            with (
                self.repository.engine.connect() as conn,
                _one_at_a_time(conn),
                conn.begin(),
            ):
                self._register(conn, name, host, pid, now, lease, is_alive, clock_offset)
        except IntegrityError:
            raise NodeConflict(
                f"node name {name!r} was registered by another process at the same moment: "
                "give every node its own name (config key `node`)"
            ) from None

    def _register(
        self,
        conn: Connection,
        name: str,
        host: str,
        pid: int,
        now: datetime,
        lease: timedelta,
        is_alive: Callable[[int], bool],
        clock_offset: float,
    ) -> None:
        if conn.dialect.name == "postgresql":
            # One registration at a time (SQLite's write transactions already are).
            conn.execute(text("LOCK TABLE batch_node IN SHARE ROW EXCLUSIVE MODE"))
        for other in node_records(conn):
            if other.host == host and other.pid == pid:
                continue
            alive = other.is_live(now, lease) and (other.host != host or is_alive(other.pid))
            if not alive:
                continue
            if self.repository.dialect == "sqlite":
                raise NodeConflict(
                    f"SQLite is for one node: node {other.name!r} (pid {other.pid} on "
                    f"{other.host}) already runs on {self.repository.url.database}, "
                    f"last heartbeat {other.heartbeat.isoformat()}. Use PostgreSQL or "
                    'MariaDB (database_url = "postgresql+psycopg://..." or '
                    '"mysql+pymysql://...") to run several nodes'
                )
            if other.name == name:
                raise NodeConflict(
                    f"node name {name!r} is in use by pid {other.pid} on {other.host} "
                    f"(last heartbeat {other.heartbeat.isoformat()}): give every node "
                    "its own name (config key `node`)"
                )
        self._replace_row(conn, name, host, pid, now, clock_offset)

    def beat(self, name: str, host: str, pid: int, *, clock_offset: float = 0.0) -> None:
        """Renew this node's heartbeat (and put its row back if it was removed).
        NodeConflict when another process holds the name: this node was presumed dead
        (paused past its lease) and replaced."""
        now = self.repository.clock()
        with self.repository.engine.begin() as conn:
            changed = conn.execute(
                update(node_table)
                .where(
                    node_table.c.name == name,
                    node_table.c.host == host,
                    node_table.c.pid == pid,
                )
                .values(heartbeat=now, clock_offset_ms=round(clock_offset * 1000))
            ).rowcount
            if changed:
                return
            holder = conn.execute(
                select(node_table.c.host, node_table.c.pid).where(node_table.c.name == name)
            ).first()
            if holder is not None:
                raise NodeConflict(
                    f"node name {name!r} was taken over by pid {holder.pid} on {holder.host} "
                    "while this node gave no heartbeat for longer than the lease; its running "
                    "executions were recovered elsewhere, so this node stops"
                )
            self._replace_row(conn, name, host, pid, now, clock_offset)

    @staticmethod
    def _replace_row(
        conn: Connection, name: str, host: str, pid: int, now: datetime, clock_offset: float
    ) -> None:
        conn.execute(delete(node_table).where(node_table.c.name == name))
        conn.execute(
            insert(node_table).values(
                name=name,
                host=host,
                pid=pid,
                started_at=now,
                heartbeat=now,
                clock_offset_ms=round(clock_offset * 1000),
            )
        )

    def leave(self, name: str, pid: int) -> None:
        """A clean stop: this node is no longer listed."""
        with self.repository.engine.begin() as conn:
            conn.execute(
                delete(node_table).where(node_table.c.name == name, node_table.c.pid == pid)
            )

    def nodes(self) -> list[NodeRecord]:
        with self.repository.reading() as conn:
            return node_records(conn)


def node_records(conn: Connection) -> list[NodeRecord]:
    """Every node's row, by name (the daemon's membership and the web console read them)."""
    rows = conn.execute(select(node_table).order_by(node_table.c.name)).mappings()
    return [
        NodeRecord(
            name=row["name"],
            host=row["host"],
            pid=row["pid"],
            started_at=row["started_at"],
            heartbeat=row["heartbeat"],
            clock_offset=row["clock_offset_ms"] / 1000,
        )
        for row in rows
    ]
