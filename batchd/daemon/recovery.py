"""The recovery pass: what crashed, here or on a dead node, is found in the repository and
repaired, at start-up (before any trigger fires), every ``recover_every`` and when ``ctl
recover`` asks. In order:

1. unfinished file claims are finished (so that an execution a dead taker started is linked
   to its file before step 3 looks up what started it);
2. running executions whose owner died are marked FAILED (``JobOperator.recover``);
3. those whose schedule or watch says ``on_crash = "restart"`` are restarted;
4. fires claimed by a dead node that never started their job are taken over and started;
5. the metrics read the nodes and the job states again.

Restarts after a crash are found from what the repository holds. Crash recovery marks an
execution FAILED, then (in a second transaction) restarts it, then (in a third) moves its fire
or file over to the restart. A node killed between any two of these leaves no in-memory note
behind, so what is still to restart is read back every pass instead: a fire or file of a
trigger with ``on_crash = "restart"`` whose execution crash recovery marked FAILED, and whose
instance has not run since except in executions crash recovery also marked FAILED (a restart
that crashed before the move). Restarting the instance's last execution, then moving the
trigger to the new one, leaves nothing to find: the next pass restarts nothing twice. Two
nodes that both try are told apart by the repository (only one restart of an instance can be
created).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, Table, and_, exists, select

from batchd import failpoints
from batchd.daemon.membership import Membership
from batchd.daemon.scheduler import Scheduler
from batchd.daemon.settings import ScheduleSettings, Settings, WatchSettings
from batchd.daemon.watcher import Watcher
from batchd.engine import JobOperator
from batchd.model import BatchStatus, JobExecution
from batchd.repository import TriggerStore
from batchd.repository.tables import job_execution, schedule_fire, trigger_file

if TYPE_CHECKING:
    from batchd.daemon.metrics import Metrics

log = logging.getLogger(__name__)

# The exit message every execution crash recovery marks FAILED starts with
# (SqlJobRepository.stale_executions); a job's own failure never does.
RECOVERED = "recovered:"

AFTER_RECOVER = failpoints.declare(
    "daemon.after_recover",
    "crashed executions are FAILED but not yet restarted (on_crash = restart); the next "
    "recovery pass, here or on any node, finds them in the repository and restarts each once",
)
AFTER_TAKE_FIRE_CLAIM = failpoints.declare(
    "daemon.after_take_fire_claim",
    "a dead node's fire claim is taken over but its job not started; the claim is stale again "
    "a lease later and the next node to recover takes it over and starts the job once",
)
AFTER_CRASH_RESTART = failpoints.declare(
    "daemon.after_crash_restart",
    "the restart of a crashed execution exists but its fire or file still names the crashed "
    "one; the restart's owner is dead, so recovery marks it FAILED and restarts the instance "
    "again once, moving the trigger to that run",
)


@dataclass(frozen=True)
class CrashedRun:
    """A trigger's run to restart: its fire or file names ``trigger_execution_id``; the
    instance's last execution (to restart) is ``last_execution_id``."""

    kind: str  # "schedule" or "watch"
    name: str
    trigger_execution_id: int
    last_execution_id: int


def crashed_runs(
    operator: JobOperator,
    schedules: Iterable[ScheduleSettings],
    watches: Iterable[WatchSettings],
) -> list[CrashedRun]:
    """The runs of triggers with ``on_crash = "restart"`` that crashed and are not
    restarted yet, oldest first."""
    wanted = [
        ("schedule", schedule_fire, "schedule_name", [t.name for t in schedules if _restarts(t)]),
        ("watch", trigger_file, "watch_name", [t.name for t in watches if _restarts(t)]),
    ]
    found: list[CrashedRun] = []
    with operator.repository.reading() as conn:
        for kind, table, column, names in wanted:
            if names:
                query = _crashed_query(table, column, names)
                found += [CrashedRun(kind, row[0], row[1], row[2]) for row in conn.execute(query)]
    return sorted(found, key=lambda run: run.last_execution_id)


def _restarts(trigger: ScheduleSettings | WatchSettings) -> bool:
    return trigger.on_crash == "restart"


def _crashed_query(table: Table, column: str, names: list[str]) -> Select[Any]:
    first = job_execution.alias()  # the execution the trigger names
    last = job_execution.alias()  # the newest execution of its instance
    newer = job_execution.alias()  # Core aliases: sqlalchemy.orm is not loaded
    return (
        select(table.c[column], first.c.id, last.c.id)
        .select_from(table)
        .join(first, first.c.id == table.c.job_execution_id)
        .join(last, last.c.instance_id == first.c.instance_id)
        .where(
            table.c[column].in_(names),
            first.c.status == BatchStatus.FAILED.value,
            first.c.exit_message.like(f"{RECOVERED}%"),
            last.c.status == BatchStatus.FAILED.value,
            last.c.exit_message.like(f"{RECOVERED}%"),
            ~exists().where(
                and_(newer.c.instance_id == last.c.instance_id, newer.c.id > last.c.id)
            ),
        )
    )


def restart_crashed(operator: JobOperator, store: TriggerStore, run: CrashedRun, node: str) -> int:
    """Restart the instance of ``run`` and move its trigger to the restart; the new
    execution's id. Raises what the restart raises (e.g. JobRestartError)."""
    restarted = operator.restart_async(run.last_execution_id)
    failpoints.failpoint(AFTER_CRASH_RESTART)
    store.move_trigger(run.trigger_execution_id, restarted.id)
    log.warning(
        "job execution %d of %s %s restarted as %d on node %s (on_crash = restart)",
        run.last_execution_id,
        run.kind,
        run.name,
        restarted.id,
        node,
    )
    return restarted.id


@dataclass(eq=False)
class Recovery:
    """The daemon's recovery pass over its operator, triggers, node and metrics."""

    operator: JobOperator
    store: TriggerStore
    scheduler: Scheduler
    watcher: Watcher
    membership: Membership
    metrics: Metrics | None  # None while [metrics] listen is off
    # One pass at a time, whether the timer or the control socket asks.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _refused_restarts: set[int] = field(default_factory=set, init=False)  # logged once

    def run(
        self, settings: Settings, *, raise_errors: bool = False
    ) -> tuple[list[JobExecution], bool]:
        """One pass with the triggers of ``settings``: the executions it marked FAILED, and
        whether old heartbeats were trusted to mean dead nodes (only once the database has
        answered this node for a lease). ``raise_errors``: a failure of step 2 raises
        instead of being logged for the next pass to retry."""
        with self._lock:
            return self._run(settings, raise_errors)

    def _run(self, settings: Settings, raise_errors: bool) -> tuple[list[JobExecution], bool]:
        trust_heartbeats = self.membership.may_recover_others()
        self.watcher.finish_claims()
        try:
            recovered = self.operator.recover(
                lease=settings.lease, trust_heartbeats=trust_heartbeats
            )
        except Exception:
            if raise_errors:
                raise
            log.exception("crash recovery failed; trying again later")
            return [], trust_heartbeats
        for execution in recovered:
            if self.metrics is not None:
                self.metrics.on_execution_recovered(execution)
            log.warning(
                "job execution %d (%s %s) FAILED by recovery: %s",
                execution.id,
                execution.job_name,
                execution.params,
                execution.exit_message,
            )
        failpoints.failpoint(AFTER_RECOVER)
        self._restart_after_crash(settings)
        if trust_heartbeats:
            self._take_over_stale_claims(settings)
        self._refresh_metrics()
        return recovered, trust_heartbeats

    def _restart_after_crash(self, settings: Settings) -> None:
        """Restart, on this node, the crashed executions whose schedule or watch says
        ``on_crash = "restart"``, as read from the repository."""
        try:
            runs = crashed_runs(self.operator, settings.schedules, settings.watches)
        except Exception:
            log.exception("cannot look up the crashed executions to restart; trying again later")
            return
        for run in runs:
            try:
                restart_crashed(self.operator, self.store, run, settings.node)
            except Exception as error:  # BatchError (e.g. the job was abandoned) or the database
                if run.last_execution_id not in self._refused_restarts:
                    self._refused_restarts.add(run.last_execution_id)
                    log.error(
                        "job execution %d of %s %s: restart after the crash failed: %s",
                        run.last_execution_id,
                        run.kind,
                        run.name,
                        error,
                    )

    def _take_over_stale_claims(self, settings: Settings) -> None:
        """Fires claimed by a node that died before it started their job. (The watcher
        takes over stale file claims itself, when it sees the file again.)"""
        before = self.operator.repository.clock() - settings.lease
        try:
            fires = self.store.stale_fire_claims(before)
            for schedule, fire_time, claimed_at in fires:
                if self.store.take_fire_claim(schedule, fire_time, claimed_at):
                    failpoints.failpoint(AFTER_TAKE_FIRE_CLAIM)
                    log.warning(
                        "schedule %s fire %s was claimed by a node that died before starting "
                        "its job: starting it here",
                        schedule,
                        fire_time.isoformat(),
                    )
                    self.scheduler.launch_claimed(schedule, fire_time)
        except Exception:
            log.exception("taking over the claims of dead nodes failed; trying again later")

    def _refresh_metrics(self) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.nodes_live.set(sum(live for _, live in self.membership.nodes()))
        except Exception:
            log.warning("cannot read the nodes for the metrics", exc_info=True)
        try:
            # Also brings in what other processes sharing the repository did.
            self.metrics.initialise_from(self.operator.repository, self.operator.registry.names())
        except Exception:
            log.exception("reading job states for the metrics failed; trying again later")


__all__ = ["RECOVERED", "CrashedRun", "Recovery", "crashed_runs", "restart_crashed"]
