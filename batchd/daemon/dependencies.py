"""Fires that wait for other jobs (``after``) and fires held to a ``deadline`` (DESIGN §7).

Both live in the repository's fire rows, so they survive restarts and every node sharing
the database sees them. :class:`FireWatch` is the pass that moves them on; the scheduler
runs it on a thread of its own:

- at once when an execution of this node's operator COMPLETED (it observes the operator,
  as the metrics do), so a fire waiting for a job this node ran starts straight away;
- and every :data:`POLL_INTERVAL` seconds, which is how a node learns of a dependency that
  another node completed. Each pass is two indexed queries (fires ``waiting``, deadlines
  ``pending`` or ``missed``) plus one per dependency of each waiting fire.

A waiting fire starts exactly once: the node that sees its dependencies complete moves it
from ``waiting`` to ``claimed`` with a compare-and-set, and only that node starts the job.
From there it is an ordinary claimed fire: a node killed before starting the job leaves a
claim that another node takes over a lease later (``scheduler.after_wait_claim``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from batchd import failpoints
from batchd.daemon.passes import PassThread
from batchd.engine.listeners import notify
from batchd.model import BatchStatus, JobExecution
from batchd.repository import TriggerStore
from batchd.repository.triggers import RecordedFire

log = logging.getLogger(__name__)

#: Seconds between two passes when nothing wakes the watch up earlier.
POLL_INTERVAL = 0.5

AFTER_WAIT_CLAIM = failpoints.declare(
    "scheduler.after_wait_claim",
    "a waiting fire whose dependencies completed is claimed by this node but its job not "
    "started; the claim goes stale a lease later and a recovering node takes it over and "
    "starts the job once, with the parameters recorded with the fire",
)
BEFORE_WAIT_CLAIM = failpoints.declare(
    "scheduler.before_wait_claim",
    "a node has seen a waiting fire's dependencies complete but not claimed it: the fire is "
    "still waiting, and the next pass of any node (this one restarted, or another) claims "
    "and starts it once; a node that loses the claim logs and counts it taken elsewhere",
)


class FireOwner(Protocol):
    """What the watch needs of the scheduler."""

    def job_of(self, name: str) -> str | None:
        """The job of a configured schedule, None for one this node does not know."""

    def deadline_schedules(self) -> list[str]:
        """The configured schedules that have a deadline."""

    def start_waited(self, fire: RecordedFire) -> None:
        """Start the job of a waiting fire this node has just claimed."""

    def taken_elsewhere(self, fire: RecordedFire) -> None:
        """Log and count a waiting fire that another node claimed first."""

    def give_up(self, fire: RecordedFire, message: str) -> None:
        """Record and count a waiting fire given up (``dependency_timeout``)."""


class FireWatch:
    """Moves waiting fires and open deadlines on; see the module docstring."""

    def __init__(
        self,
        store: TriggerStore,
        owner: FireOwner,
        clock: Callable[[], datetime],
        listener: object | None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.clock = clock
        self.listener = listener
        self._pass_lock = threading.Lock()
        # start() runs the first pass itself; the thread runs the later ones.
        self._passes = PassThread(
            "batchd-fire-watch",
            self.check,
            every=POLL_INTERVAL,
            what="checking waiting fires and deadlines",
            level=logging.WARNING,
            first_at_once=False,
        )

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        """A first pass at once (fires whose dependencies completed while this node was
        down start now; the late gauges exist from start-up on), then the thread."""
        try:
            self.check()
        except Exception:
            log.warning("checking waiting fires and deadlines failed", exc_info=True)
        self._passes.start()

    def stop(self) -> None:
        self._passes.stop()

    @property
    def thread(self) -> threading.Thread | None:
        """The thread of the later passes, while started."""
        return self._passes.thread

    def wake(self) -> None:
        self._passes.wake()

    def on_execution_ended(self, execution: JobExecution) -> None:
        """Operator observer hook: a completed execution may be what a fire waits for."""
        if execution.status == BatchStatus.COMPLETED:
            self._passes.wake()

    # -------------------------------------------------------------------- pass

    def check(self) -> None:
        """One pass: start waiting fires whose dependencies completed, give up those past
        their ``wait_timeout``, count and flag missed deadlines."""
        with self._pass_lock:
            self._check_waiting()
            self._check_deadlines()

    def _check_waiting(self) -> None:
        now = self.clock()
        for fire in self.store.waiting_fires():
            if fire.wait_until is not None and now >= fire.wait_until:
                if self.store.end_waiting_fire(fire.schedule, fire.fire_time, "dependency_timeout"):
                    self.owner.give_up(fire, self._timeout_message(fire))
                continue
            if self.owner.job_of(fire.schedule) is None:
                continue  # not a schedule of this node's config: another node starts it
            if not all(self.store.completed_with(d["job"], d["params"]) for d in fire.waits_for):
                continue
            failpoints.failpoint(BEFORE_WAIT_CLAIM)
            if self.store.end_waiting_fire(fire.schedule, fire.fire_time, "claimed"):
                failpoints.failpoint(AFTER_WAIT_CLAIM)
                self.owner.start_waited(fire)
            else:
                self.owner.taken_elsewhere(fire)

    def _timeout_message(self, fire: RecordedFire) -> str:
        missing = [
            f"{d['job']} {d['params']}"
            for d in fire.waits_for
            if not self.store.completed_with(d["job"], d["params"])
        ]
        until = fire.wait_until.isoformat() if fire.wait_until else "?"
        return f"gave up at {until} waiting for {'; '.join(missing) or 'nothing'}"

    def _check_deadlines(self) -> None:
        now = self.clock()
        late: set[str] = set()
        for fire in self.store.open_deadlines():
            job = self.owner.job_of(fire.schedule)
            if job is None or fire.deadline_at is None:
                continue
            if fire.deadline_state == "pending":
                # Met as soon as it completes in time, not only once the deadline has passed:
                # the console shows the outcome while the fire is fresh.
                if self._completed(job, fire, by=fire.deadline_at):
                    self.store.set_deadline_state(fire, "met")
                    continue
                if now < fire.deadline_at:
                    continue
                if self.store.set_deadline_state(fire, "missed"):
                    self._missed(fire)
                late.add(fire.schedule)
            elif self._completed(job, fire):
                self.store.set_deadline_state(fire, "done")
                log.info(
                    "schedule %s business date %s: completed after its deadline",
                    fire.schedule,
                    fire.business_date,
                )
            else:
                late.add(fire.schedule)
        for name in self.owner.deadline_schedules():
            self._tell("on_schedule_late", name, name in late)

    def _completed(self, job: str, fire: RecordedFire, by: datetime | None = None) -> bool:
        if fire.params is None:
            return False  # its parameters could not be rendered: it never ran
        return self.store.completed_with(job, fire.params, by=by)

    def _missed(self, fire: RecordedFire) -> None:
        log.warning(
            "schedule %s business date %s (fire %s): not completed by its deadline %s",
            fire.schedule,
            fire.business_date,
            fire.fire_time.isoformat(),
            fire.deadline_at.isoformat() if fire.deadline_at else "?",
        )
        self._tell("on_deadline_missed", fire.schedule)

    def _tell(self, hook_name: str, *args: Any) -> None:
        notify(self.listener, hook_name, *args)


__all__ = ["AFTER_WAIT_CLAIM", "BEFORE_WAIT_CLAIM", "POLL_INTERVAL", "FireOwner", "FireWatch"]
