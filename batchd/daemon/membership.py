"""This daemon as one node among those sharing the repository: its row in ``batch_node``,
its clock's offset to the database's, and whether the database answers.

The main loop calls :meth:`Membership.beat` when :meth:`Membership.next_beat` is due: every
``heartbeat`` while the database answers, with a growing back-off while it does not.
Recovering other nodes' executions waits until the database has answered for a whole
lease: after an outage every heartbeat is old, and the nodes that wrote them are not dead.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import timedelta

from sqlalchemy import text

from batchd.engine.operator import process_is_alive
from batchd.repository import SqlJobRepository
from batchd.repository.nodes import DatabaseClock, NodeConflict, NodeRecord, NodeStore

log = logging.getLogger(__name__)

# Back-off between attempts while the database does not answer (seconds, last repeats).
RETRY_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# A clock further than this from the database's is worth a warning (leases are safe
# anyway: they use the database's time).
SKEW_WARNING_SECONDS = 2.0


class Membership:
    """One node's presence in the repository."""

    def __init__(
        self,
        repository: SqlJobRepository,
        clock: DatabaseClock,
        *,
        name: str,
        heartbeat: timedelta,
        lease: timedelta,
    ) -> None:
        self.repository = repository
        self.clock = clock
        self.name = name
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.heartbeat = heartbeat.total_seconds()
        self.lease = lease
        self.store = NodeStore(repository)
        self.database_up = True
        self.last_error: str | None = None
        self._up_since = time.monotonic()
        self._failures = 0
        self._next_beat = time.monotonic() + self.heartbeat
        self._skew_warned = False

    def join(self) -> None:
        """Measure the clock and register; NodeConflict when the name (or, on SQLite, the
        database) is taken by a live node."""
        self._measure_clock()
        self.store.register(
            self.name,
            self.host,
            self.pid,
            lease=self.lease,
            is_alive=process_is_alive,
            clock_offset=self.clock.skew_seconds,
        )

    def next_beat(self) -> float:
        """When :meth:`beat` is due (``time.monotonic()`` seconds)."""
        return self._next_beat

    def beat(self) -> bool:
        """Renew this node's heartbeat and its clock offset. Returns True when the database
        has just come back after failing; NodeConflict when another process took over this
        node's name (it was presumed dead)."""
        came_back = False
        try:
            self._measure_clock()
            self.store.beat(self.name, self.host, self.pid, clock_offset=self.clock.skew_seconds)
        except NodeConflict:
            raise  # replaced by another process: not a database failure
        except Exception as error:
            self._failed(error)
        else:
            came_back = not self.database_up
            if came_back:
                log.warning("the database answers again (after %d failed attempts)", self._failures)
                self._up_since = time.monotonic()
            self.database_up, self.last_error, self._failures = True, None, 0
            self._next_beat = time.monotonic() + self.heartbeat
        return came_back

    def _failed(self, error: Exception) -> None:
        self.last_error = _one_line(error)
        delay = RETRY_BACKOFF[min(self._failures, len(RETRY_BACKOFF) - 1)]
        self._failures += 1
        if self.database_up or self._failures in (2, 5) or self._failures % 20 == 0:
            log.error(
                "the database does not answer (attempt %d, next in %gs): %s",
                self._failures,
                delay,
                self.last_error,
            )
        self.database_up = False
        self._next_beat = time.monotonic() + delay

    def _measure_clock(self) -> None:
        self.clock.measure(self.repository)
        skew = self.clock.skew_seconds
        if abs(skew) > SKEW_WARNING_SECONDS and not self._skew_warned:
            log.warning(
                "this node's clock is %.1fs %s the database's: batchd uses the database's "
                "time for heartbeats and leases, but schedules fire by this clock; keep the "
                "clocks in sync (NTP)",
                abs(skew),
                "ahead of" if skew > 0 else "behind",
            )
        self._skew_warned = abs(skew) > SKEW_WARNING_SECONDS

    def may_recover_others(self) -> bool:
        """Whether heartbeats older than the lease mean a dead node: the database has
        answered this node for at least a lease."""
        return self.database_up and (
            time.monotonic() - self._up_since >= self.lease.total_seconds()
        )

    def database_state(self) -> str:
        """``"ok"`` if the database answers a query now and answered the last heartbeat,
        else one line saying what is wrong."""
        try:
            with self.repository.reading() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as error:
            return _one_line(error)
        if not self.database_up:
            return f"unreachable at the last heartbeat: {self.last_error}"
        return "ok"

    def nodes(self) -> list[tuple[NodeRecord, bool]]:
        """Every registered node, and whether it is live (heartbeat within the lease)."""
        now = self.clock()
        return [(node, node.is_live(now, self.lease)) for node in self.store.nodes()]

    def leave(self) -> None:
        try:
            self.store.leave(self.name, self.pid)
        except Exception as error:
            log.warning("cannot remove node %s from the repository: %s", self.name, error)


def _one_line(error: Exception) -> str:
    """An error as its type and the first line of its message."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}"
