"""What ``batchd ctl ... --follow`` shows while it polls: a live progress bar on a terminal,
plain lines with the time otherwise (a log, a pipe, CI)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn

from batchd.ctl import RUNNING, ControlClient, backfill_exit, follow, outcome_exit
from batchd.ctl_render import (
    backfill_line,
    duration,
    elapsed,
    first_line,
    make_console,
    progress,
    reader_total,
    render_backfills,
)


class _LiveLine:
    """A live progress bar (of ``columns``) on a terminal, else a plain line with the time
    whenever the line has changed."""

    def __init__(self, console: Console, *columns: ProgressColumn, **fields: Any) -> None:
        self.console = console
        self.last = ""
        self.bar: Progress | None = None
        if console.is_terminal:
            self.bar = Progress(*columns, console=console)
            self.task = self.bar.add_task("", total=None, **fields)
            self.bar.start()

    def _show(self, line: str, **bar: Any) -> None:
        """Show ``line``: on the bar as ``bar`` (its task's fields), else printed."""
        if self.bar is not None:
            self.bar.update(self.task, **bar)
        elif line != self.last:
            self.console.print(f"{datetime.now().astimezone():%H:%M:%S} {line}", highlight=False)
        self.last = line

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class Follower(_LiveLine):
    """Shows an execution as ``--follow`` polls it."""

    def __init__(self, console: Console) -> None:
        columns = TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}")
        super().__init__(console, *columns, detail="")

    def show(self, execution: Mapping[str, Any]) -> None:
        status = str(execution.get("status"))
        detail = progress(execution) or status
        known = reader_total(
            [step for step in execution.get("steps", []) if step.get("status") in RUNNING]
        )
        total, done = (known[2], known[1]) if known else (None, 0)
        self._show(
            f"execution {execution['id']} of {execution['job']} {status}: {detail}",
            description=f"{execution['id']} {execution['job']} {status}",
            total=total,
            completed=done,
            detail=detail,
        )


def render_ended(console: Console, execution: Mapping[str, Any]) -> None:
    """``execution 5 of lines COMPLETED after 3.2s: load 100 read, 100 written`` and the
    first line of its exit message if it has one."""
    steps = execution.get("steps", [])
    read = sum(int(step.get("read_count", 0)) for step in steps if ":" not in step["name"])
    written = sum(int(step.get("write_count", 0)) for step in steps if ":" not in step["name"])
    took = duration(elapsed(execution.get("start_time"), execution.get("end_time")))
    line = (
        f"execution {execution['id']} of {execution['job']} {execution.get('status')} after "
        f"{took}: {read:,} read, {written:,} written"
    )
    why = first_line(execution.get("exit_message"))
    console.print(line + (f" ({why})" if why else ""), highlight=False)


class BackfillFollower(_LiveLine):
    """Shows a backfill as ``backfill --follow`` polls it: a bar of its dates."""

    def __init__(self, console: Console) -> None:
        super().__init__(
            console, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()
        )

    def show(self, view: Mapping[str, Any]) -> None:
        line = backfill_line(view)
        ended = len(view.get("done", [])) + len(view.get("not_started", []))
        total = ended + len(view.get("running", [])) + len(view.get("left", []))
        self._show(line, description=line, total=total, completed=ended)

    def close(self, view: Mapping[str, Any]) -> None:
        self.stop()
        render_backfills(self.console, {"backfills": [view]})


def follow_execution(
    client: ControlClient, execution_id: int, show: bool, as_json: bool, interval: float
) -> int:
    """Poll the execution until it ends, showing its progress if ``show``; then say how
    it ended (as JSON with ``as_json``). Returns the exit status that says how."""
    console = make_console()
    follower = Follower(console) if show else None
    ended = follow(
        lambda: client.call("execution", id=execution_id),
        lambda view: view.get("status") in RUNNING,
        follower.show if follower is not None else lambda view: None,
        interval,
    )
    if follower is not None:
        follower.stop()
    if as_json:
        console.print_json(data=ended)
    else:
        render_ended(console, ended)
    return outcome_exit(str(ended.get("status")))


def follow_backfill(client: ControlClient, backfill_id: int, interval: float) -> int:
    """Poll the backfill until it ends, showing its dates; returns its exit status."""
    follower = BackfillFollower(make_console())
    ended = follow(
        lambda: client.call("backfills", id=backfill_id)["backfills"][0],
        # A stopped backfill's running dates are still stopping: follow them to their end.
        lambda view: view.get("state") == "running" or bool(view.get("running")),
        follower.show,
        interval,
    )
    follower.close(ended)
    return backfill_exit(ended)
