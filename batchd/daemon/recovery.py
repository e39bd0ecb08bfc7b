"""Restarts after a crash (``on_crash = "restart"``), found from what the repository holds.

Crash recovery marks an execution FAILED, then (in a second transaction) restarts it, then
(in a third) moves its fire or file over to the restart. A node killed between any two of
these leaves no in-memory note behind, so what is still to restart is read back every
recovery pass instead: a fire or file of a trigger with ``on_crash = "restart"`` whose
execution crash recovery marked FAILED, and whose instance has not run since except in
executions crash recovery also marked FAILED (a restart that crashed before the move).
Restarting the instance's last execution, then moving the trigger to the new one, leaves
nothing to find: the next pass restarts nothing twice. Two nodes that both try are told
apart by the repository (only one restart of an instance can be created).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, Table, and_, exists, select
from sqlalchemy.orm import aliased

from batchd import failpoints
from batchd.daemon.settings import ScheduleSettings, WatchSettings
from batchd.engine import JobOperator
from batchd.model import BatchStatus
from batchd.repository import TriggerStore
from batchd.repository.tables import job_execution, schedule_fire, trigger_file

log = logging.getLogger(__name__)

# The exit message every execution crash recovery marks FAILED starts with
# (SqlJobRepository.stale_executions); a job's own failure never does.
RECOVERED = "recovered:"

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
    first = aliased(job_execution)  # the execution the trigger names
    last = aliased(job_execution)  # the newest execution of its instance
    newer = aliased(job_execution)
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


__all__ = ["RECOVERED", "CrashedRun", "crashed_runs", "restart_crashed"]
