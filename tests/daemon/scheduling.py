"""The scheduling part of the daemon in one process, for the schedule tests: a real SQLite
repository, operator, TriggerStore and Scheduler, with a clock the test sets."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator

from pydantic import BaseModel

import batchd
from batchd import JobOperator, JobRegistry, StepContext
from batchd.daemon.scheduler import Scheduler
from batchd.daemon.settings import CalendarSettings, ScheduleSettings
from batchd.repository import SqlJobRepository, TriggerStore
from tests.support.jobs import registry_of, tasklet_job

WAIT = 15.0


class DailyParams(BaseModel):
    date: dt.date


def make_registry() -> JobRegistry:
    """``daily`` takes a typed date; ``plain`` takes anything."""

    def noop(ctx: StepContext) -> None:
        pass

    daily = tasklet_job("daily", noop, step="run", params_model=DailyParams)
    return registry_of(daily, tasklet_job("plain", noop, step="run"))


class Clock:
    """A clock the test sets."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


class FireLog:
    """A schedule listener that keeps every (schedule, outcome) it hears."""

    def __init__(self) -> None:
        self.fires: list[tuple[str, str]] = []
        self._changed = threading.Condition()

    def on_schedule_fire(self, name: str, outcome: str) -> None:
        with self._changed:
            self.fires.append((name, outcome))
            self._changed.notify_all()

    def wait_for(self, fire: tuple[str, str], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: fire in self.fires, timeout)


class Node:
    """One run of the daemon's scheduling part: repository, operator, store, scheduler."""

    def __init__(
        self,
        url: str,
        schedules: list[ScheduleSettings],
        clock: Callable[[], dt.datetime],
        listener: object | None = None,
        calendars: list[CalendarSettings] | None = None,
    ) -> None:
        self.repository = SqlJobRepository(url)
        self.operator = JobOperator(self.repository, make_registry(), heartbeat=0.2)
        self.store = TriggerStore(self.repository)
        self.stopped = False
        self.listener = listener if listener is not None else FireLog()
        self.scheduler = Scheduler(
            schedules,
            self.operator,
            self.store,
            timezone="UTC",
            clock=clock,
            listener=self.listener,
            calendars=calendars or [],
        )

    def started_executions(self, schedule: str) -> list[batchd.JobExecution]:
        """The executions the schedule's fires started, each waited for."""
        return [
            self.operator.wait(fire["job_execution_id"], timeout=WAIT)
            for fire in self.store.fires(schedule)
            if fire["job_execution_id"] is not None
        ]

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.scheduler.shutdown()
        self.operator.shutdown()
        self.repository.dispose()


def node_factory(
    url: str, default_clock: Callable[[], dt.datetime]
) -> Iterator[Callable[..., Node]]:
    """Makes Nodes on one database; stops each one left running at the end."""
    made: list[Node] = []

    def make(
        schedules: list[ScheduleSettings],
        clock: Callable[[], dt.datetime] | None = None,
        listener: object | None = None,
        calendars: list[CalendarSettings] | None = None,
    ) -> Node:
        node = Node(url, schedules, clock or default_clock, listener, calendars)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()
