"""What each page of the web console shows, as plain data: the JSON answer of the page, and
what its HTML template renders. Times are ISO 8601 UTC strings, as the control socket sends
them; nothing here is HTML (the templates escape every value)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, RowMapping

from batchd.daemon.calendars import build_calendar
from batchd.daemon.protocol import execution_view, iso, node_view
from batchd.daemon.schedule_entries import ScheduleEntry, make_entry
from batchd.daemon.schedule_triggers import describe_trigger
from batchd.daemon.settings import ScheduleSettings, Settings
from batchd.model import RUNNING_STATUSES, JobExecution, StepExecution
from batchd.web.store import GRID_PAGE, GRID_WINDOW, Cell, ReadOnlyStore

#: Business dates the overview shows at most (DESIGN §9: the last 14 at least).
DAYS = 14
MAX_DAYS = 62
#: Bytes of an execution's log the execution page shows (its end).
LOG_TAIL_BYTES = 32 * 1024
RECENT_FIRES = 5
RECENT_FILES = 20
RUNNING = frozenset(status.value for status in RUNNING_STATUSES)
FAILED = frozenset({"FAILED", "UNKNOWN"})

NextFires = Callable[[], Mapping[str, datetime | None]]


class NotFound(LookupError):
    """The page names something the repository does not have (HTTP 404)."""


def first_line(message: str | None) -> str | None:
    return message.strip().splitlines()[0] if message and message.strip() else None


def row_date(text: Any, created: str | datetime, timezone: ZoneInfo) -> date:
    """An execution's date (DESIGN §9) from its ``date`` parameter as the database read it
    from the JSON, else from its creation time (see :func:`created_date`)."""
    if isinstance(text, str):
        try:
            return date.fromisoformat(text[:10])
        except ValueError:
            pass
    return created_date(created, timezone)


def created_date(created: str | datetime, timezone: ZoneInfo) -> date:
    """The day, in ``timezone``, of a creation time: aware, or as the database returns it
    untyped (SQLite: naive UTC text; PostgreSQL: a naive UTC datetime)."""
    moment = created if isinstance(created, datetime) else datetime.fromisoformat(created)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(timezone).date()


def business_date(params: Any, created: datetime, timezone: ZoneInfo) -> date:
    """An execution's date (DESIGN §9): its ``date`` parameter when that is a date, else the
    day it was created in the daemon's time zone."""
    return row_date(params.get("date") if isinstance(params, dict) else None, created, timezone)


@dataclass
class Pages:
    """The data of every page, read from ``store`` with the daemon's current ``settings``
    (a callable: a reload may replace them). ``next_fires`` is the running scheduler's
    answer, when there is one; without it the next fires are computed from the config."""

    store: ReadOnlyStore
    settings: Callable[[], Settings]
    next_fires: NextFires | None = None
    log_dir: Callable[[], Path | None] = lambda: None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    _entries: tuple[int, dict[str, ScheduleEntry]] = field(default=(0, {}), repr=False)

    # ---------------------------------------------------------------- overview

    def overview(self, days: int = DAYS) -> dict[str, Any]:
        timezone = ZoneInfo(self.settings().timezone)
        newest: dict[tuple[str, date], tuple[int, str]] = {}
        attempts: dict[tuple[str, date], int] = {}
        failed: list[int] = []
        with self.store.reading() as conn:
            top = below = self.store.newest_id(conn)
            known: set[date] = set()
            while below > 0 and top - below < GRID_WINDOW:
                # The oldest date shown so far: a page with nothing newer changes nothing.
                oldest = sorted(known)[-days] if len(known) >= days else date.min
                added = False
                rows = self.store.grid_rows(conn, below, GRID_PAGE)
                # Newest first: the first execution seen of a (job, date) is the one shown.
                for execution_id, job, day, status, created in rows:
                    key = (job, row_date(day, created, timezone))
                    newest.setdefault(key, (execution_id, status))
                    attempts[key] = attempts.get(key, 0) + 1
                    known.add(key[1])
                    added = added or key[1] >= oldest
                    if status in FAILED and len(failed) < 10:
                        failed.append(execution_id)
                below -= GRID_PAGE
                if not added and len(known) >= days:
                    break
            dates = sorted(known)[-days:]
            shown = set(dates)
            failed_cells = [
                execution_id
                for (_job, day), (execution_id, status) in newest.items()
                if status in FAILED and day in shown
            ]
            cells = self.store.cells(conn, [*failed, *failed_cells])
            names = self.store.job_names(conn)
            running = self.store.running(conn)
            progress = self._running_progress(conn, running)
        jobs = sorted(set(names) | {job for job, _day in newest})
        grid = [
            {
                "name": job,
                "cells": [
                    self._grid_cell(newest.get((job, day)), cells, day, attempts.get((job, day), 0))
                    for day in dates
                ],
            }
            for job in jobs
        ]
        return {
            "page": "overview",
            "dates": [day.isoformat() for day in dates],
            "jobs": grid,
            "running": [
                {**self._cell_view(cell, timezone), "progress": progress.get(cell.id)}
                for cell in running
            ],
            "failures": [self._cell_view(cells[i], timezone) for i in failed if i in cells],
            "generated_at": iso(self.clock()),
        }

    @staticmethod
    def _grid_cell(
        shown: tuple[int, str] | None, cells: dict[int, Cell], day: date, attempts: int
    ) -> dict[str, Any]:
        if shown is None:
            return {"date": day.isoformat(), "id": None, "status": None, "attempts": 0}
        execution_id, status = shown
        cell = cells.get(execution_id)
        return {
            "date": day.isoformat(),
            "id": execution_id,
            "status": status,
            "attempts": attempts,
            "exit_message": first_line(cell.exit_message) if cell is not None else None,
        }

    @staticmethod
    def _cell_view(cell: Cell, timezone: ZoneInfo) -> dict[str, Any]:
        params = json.loads(cell.params)
        return {
            "id": cell.id,
            "job": cell.job,
            "date": business_date(params, cell.create_time, timezone).isoformat(),
            "params": params,
            "status": cell.status,
            "exit_message": first_line(cell.exit_message),
            "start_time": iso(cell.start_time),
            "end_time": iso(cell.end_time),
        }

    def _running_progress(self, conn: Connection, running: list[Cell]) -> dict[int, str]:
        """One line per running execution: its running step and how far it got."""
        lines: dict[int, str] = {}
        for cell in running[:50]:
            execution = self.store.execution(conn, cell.id)
            if execution is None:
                continue
            for step in execution.step_executions:
                if step.status.value in RUNNING and ":" not in step.step_name:
                    lines[cell.id] = (
                        f"{step.step_name}: {step.read_count:,} read, {step.write_count:,} written"
                    )
        return lines

    # --------------------------------------------------------------- execution

    def execution(self, execution_id: int) -> dict[str, Any]:
        with self.store.reading() as conn:
            execution = self.store.execution(conn, execution_id)
            if execution is None:
                raise NotFound(f"no job execution with id {execution_id}")
            running = execution.status.value in RUNNING
            previous = (
                self.store.previous_completed(conn, execution.job_name, execution.id)
                if running
                else []
            )
            trigger = self.store.trigger_of(conn, execution.id)
        view = execution_view(execution)
        by_name = {step.step_name: step for step in previous}
        for step_view, step in zip(view["steps"], execution.step_executions, strict=True):
            step_view["progress"] = step_progress(step, execution, by_name.get(step.step_name))
            step_view["partition"] = ":" in step.step_name
        if trigger is not None:
            trigger["at"] = iso(trigger["at"])
        return {
            "page": "execution",
            "execution": view,
            "trigger": trigger,
            "log": self._log_tail(execution),
            "generated_at": iso(self.clock()),
        }

    def _log_tail(self, execution: JobExecution) -> dict[str, Any]:
        """The end of ``<log_dir>/<job>/<id>.log`` (DESIGN §6) when the daemon keeps logs."""
        log_dir = self.log_dir()
        if log_dir is None:
            return {"kept": False, "path": None, "text": None, "truncated": False}
        root = log_dir.resolve()
        path = (root / execution.job_name / f"{execution.id}.log").resolve()
        # A job name is data: "../x" must not lead the console out of the log directory.
        if not path.is_relative_to(root) or not path.is_file():
            return {"kept": True, "path": str(path), "text": None, "truncated": False}
        with path.open("rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - LOG_TAIL_BYTES))
            data = file.read()
        return {
            "kept": True,
            "path": str(path),
            "text": data.decode("utf-8", errors="replace"),
            "truncated": size > LOG_TAIL_BYTES,
        }

    # --------------------------------------------------------------- schedules

    def schedules(self) -> dict[str, Any]:
        settings = self.settings()
        entries = self._schedule_entries(settings)
        now = self.clock()
        next_fires = dict(self.next_fires()) if self.next_fires is not None else None
        with self.store.reading() as conn:
            waiting: dict[str, list[dict[str, Any]]] = {}
            for row in self.store.waiting_fires(conn):
                waiting.setdefault(row["schedule_name"], []).append(
                    {
                        "fire_time": iso(row["fire_time"]),
                        "business_date": row["business_date"],
                        "waits_for": json.loads(row["waits_for"] or "[]"),
                        "wait_until": iso(row["wait_until"]),
                    }
                )
            schedules = []
            for schedule in settings.schedules:
                entry = entries.get(schedule.name)
                if next_fires is not None:
                    following = next_fires.get(schedule.name)
                else:
                    following = _next_fire(entry, now) if not schedule.paused else None
                recent = self.store.recent_fires(conn, schedule.name, RECENT_FIRES)
                fires = [_fire_view(row) for row in recent]
                schedules.append(
                    {
                        **_schedule_view(schedule, settings.timezone),
                        "paused": following is None and (next_fires is not None or schedule.paused),
                        "next_fire_time": iso(following),
                        "next_closed": (
                            entry.closed_because(following)
                            if entry is not None and following is not None
                            else None
                        ),
                        "last": fires[0] if fires else None,
                        "recent": fires,
                        "waiting": waiting.get(schedule.name, []),
                    }
                )
        return {"page": "schedules", "schedules": schedules, "generated_at": iso(now)}

    def _schedule_entries(self, settings: Settings) -> dict[str, ScheduleEntry]:
        """The schedules' triggers and calendars, built once per config (a reload makes a
        new list)."""
        key = id(settings.schedules)
        if self._entries[0] != key:
            calendars = {c.name: build_calendar(c) for c in settings.calendars}
            built: dict[str, ScheduleEntry] = {}
            for schedule in settings.schedules:
                try:
                    built[schedule.name] = make_entry(schedule, settings.timezone, calendars)
                except ValueError:
                    continue  # the daemon's config check has said what is wrong
            self._entries = (key, built)
        return self._entries[1]

    # ----------------------------------------------------------------- watches

    def watches(self) -> dict[str, Any]:
        settings = self.settings()
        with self.store.reading() as conn:
            watches = [
                {
                    "name": watch.name,
                    "job": watch.job,
                    "directory": str(watch.directory),
                    "pattern": watch.regex if watch.regex is not None else (watch.pattern or "*"),
                    "files": [
                        {
                            "name": row["file_name"],
                            "state": row["state"],
                            "claimed_at": iso(row["claimed_at"]),
                            "node": row["node"],
                            "execution_id": row["job_execution_id"],
                            "execution_status": row["execution_status"],
                            "reason": row["reason"],
                        }
                        for row in self.store.recent_files(conn, watch.name, RECENT_FILES)
                    ],
                }
                for watch in settings.watches
            ]
        return {"page": "watches", "watches": watches, "generated_at": iso(self.clock())}

    # ------------------------------------------------------------------- nodes

    def nodes(self) -> dict[str, Any]:
        settings = self.settings()
        now = self.clock()
        with self.store.reading() as conn:
            nodes = self.store.nodes(conn)
        return {
            "page": "nodes",
            "lease_seconds": settings.lease.total_seconds(),
            "nodes": [
                node_view(node, live=node.is_live(now, settings.lease), this=settings.node)
                for node in nodes
            ],
            "generated_at": iso(now),
        }


def step_progress(
    step: StepExecution, execution: JobExecution, previous: StepExecution | None
) -> dict[str, Any] | None:
    """How far a running step got: ``value`` of ``max`` (None when nothing says how much
    there is) and ``text`` saying what that is measured against."""
    if step.status.value not in RUNNING:
        return None
    prefix = step.step_name + ":"
    partitions = [s for s in execution.step_executions if s.step_name.startswith(prefix)]
    if partitions:
        done = sum(1 for s in partitions if s.status.value == "COMPLETED")
        return {
            "value": done,
            "max": len(partitions),
            "percent": round(100 * done / len(partitions)),
            "text": f"{done} of {len(partitions)} partitions done, {step.read_count:,} items read",
        }
    read = step.read_count
    if previous is not None and previous.read_count > 0:
        # The last completed run read this many: the best guess of what there is to read.
        expected = max(previous.read_count, read)
        return {
            "value": read,
            "max": expected,
            "percent": round(100 * read / expected),
            "text": f"{read:,} of about {expected:,} items read "
            f"(the last completed run read {previous.read_count:,})",
        }
    return {
        "value": read,
        "max": None,
        "percent": None,
        "text": f"{read:,} items read so far (no completed run to compare with)",
    }


def _next_fire(entry: ScheduleEntry | None, now: datetime) -> datetime | None:
    if entry is None:
        return None
    following: datetime | None = entry.nominal.get_next_fire_time(None, now)
    return following.astimezone(UTC) if following is not None else None


def _schedule_view(schedule: ScheduleSettings, timezone: str) -> dict[str, Any]:
    return {
        "name": schedule.name,
        "job": schedule.job,
        "trigger": describe_trigger(schedule),
        "timezone": schedule.timezone or timezone,
        "calendar": schedule.calendar,
        "after": [{"job": dep.job, "params": dep.params} for dep in schedule.after],
        "wait_timeout": _duration(schedule.wait_timeout),
        "deadline": _duration(schedule.deadline),
    }


def _fire_view(row: RowMapping) -> dict[str, Any]:
    return {
        "fire_time": iso(row["fire_time"]),
        "business_date": row["business_date"],
        "outcome": row["outcome"],
        "message": row["message"],
        "node": row["node"],
        "execution_id": row["job_execution_id"],
        "execution_status": row["execution_status"],
        "deadline_at": iso(row["deadline_at"]),
        "deadline_state": row["deadline_state"],
    }


def _duration(value: timedelta | None) -> str | None:
    return str(value) if value is not None else None


__all__ = ["DAYS", "MAX_DAYS", "NotFound", "Pages", "business_date", "step_progress"]
