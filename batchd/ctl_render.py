"""The tables ``batchd ctl`` shows people: one ``render_*`` function per kind of result,
named by the ``renderer`` of each operation in :data:`batchd.daemon.protocol.OPERATIONS`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table
from rich.text import Text

from batchd.ctl import RUNNING, ping_line, plural
from batchd.ctl import duration as duration  # re-exported: batchd.ctl_follow uses it

_MESSAGE_WIDTH = 120  # characters of an exit message shown in a table of executions

_STATUS_STYLE = {
    "COMPLETED": "green",
    "STARTING": "cyan",
    "STARTED": "cyan",
    "STOPPING": "yellow",
    "STOPPED": "yellow",
    "FAILED": "bold red",
    "ABANDONED": "magenta",
    "UNKNOWN": "bold red",
}


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def local_time(value: str | None, zone: str | None = None) -> str:
    """An ISO UTC time from the daemon, to the second, in the IANA time zone ``zone`` (else
    the local one) with the zone's abbreviation or offset: ``2026-12-01 01:30:00 CET``. The
    abbreviation tells the two 02:30 of the night the clocks go back apart (CEST, then CET)."""
    moment = parse_time(value)
    if moment is None:
        return ""
    shown = moment.astimezone(ZoneInfo(zone)) if zone else moment.astimezone()
    return shown.strftime("%Y-%m-%d %H:%M:%S %Z")


def elapsed(start: str | None, end: str | None, now: datetime | None = None) -> float | None:
    began = parse_time(start)
    if began is None:
        return None
    ended = parse_time(end) or now or datetime.now(UTC)
    return max(0.0, (ended - began).total_seconds())


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def status_text(status: str | None) -> Text:
    return Text(status or "", style=_STATUS_STYLE.get(status or "", ""))


def progress(execution: Mapping[str, Any], now: datetime | None = None) -> str:
    """What a running execution has done so far: the running step's items read and written
    and its read rate (for a partitioned step, summed over its running partitions)."""
    if execution.get("status") not in RUNNING:
        return ""
    running = [step for step in execution.get("steps", []) if step.get("status") in RUNNING]
    if not running:
        return "starting" if execution.get("status") == "STARTING" else ""
    partitions = [step for step in running if ":" in step["name"]]
    counted = partitions or running[-1:]
    name = counted[0]["name"].split(":")[0]
    read = sum(int(step.get("read_count", 0)) for step in counted)
    written = sum(int(step.get("write_count", 0)) for step in counted)
    starts = [parse_time(step.get("start_time")) for step in counted]
    began = min((moment for moment in starts if moment is not None), default=None)
    seconds = ((now or datetime.now(UTC)) - began).total_seconds() if began else 0.0
    rate = f", {read / seconds:,.0f} items/s" if seconds > 0 else ""
    parts = f" ({len(partitions)} partitions)" if partitions else ""
    line = f"{name}{parts}: {read:,} read, {written:,} written{rate}"
    return line + input_progress(counted, seconds) + instance_counts(execution, name)


def reader_total(steps: list[Mapping[str, Any]]) -> tuple[str, int, int, int] | None:
    """``(unit, done, total, start)`` of the steps' readers, summed (partitions), when
    every one of them knows its total; else None."""
    found: list[Mapping[str, Any]] = []
    for step in steps:
        each = step.get("progress")
        if not isinstance(each, Mapping) or each.get("total") is None:
            return None
        found.append(each)
    if not found:
        return None
    done, total, start = (
        sum(int(each[key]) for each in found) for key in ("done", "total", "start")
    )
    return str(found[0]["unit"]), done, total, start


def input_progress(steps: list[Mapping[str, Any]], seconds: float) -> str:
    """``, 45% of 10.2 MB, ETA 1m20s``: how far the readers are through their input and,
    from this execution's own pace, when they will be through."""
    known = reader_total(steps)
    if known is None:
        return ""
    unit, done, total, start = known
    if total <= 0:
        return ""
    text = f", {min(100.0, 100 * done / total):.0f}% of {amount(total, unit)}"
    pace = (done - start) / seconds if seconds > 0 else 0
    if pace > 0 and done < total:
        text += f", ETA {duration((total - done) / pace)}"
    return text


def amount(count: int, unit: str) -> str:
    """``10.2 MB``, ``850 bytes``, ``1,200 items``."""
    if unit != "bytes":
        return f"{count:,} {unit}"
    size = float(count)
    for name in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or name == "GB":
            return f"{count:,} bytes" if name == "bytes" else f"{size:.1f} {name}"
        size /= 1000
    raise AssertionError("unreachable")


def instance_counts(execution: Mapping[str, Any], step: str) -> str:
    """`` (3,400 read, 3,390 written over 2 executions)``: the step's counts over every
    execution of the instance, when this is not the first: a restart carries on."""
    instance = execution.get("instance") or {}
    counts = (instance.get("steps") or {}).get(step)
    executions = int(instance.get("executions") or 0)
    if not counts or executions < 2:
        return ""
    return (
        f" ({int(counts.get('read_count', 0)):,} read, {int(counts.get('write_count', 0)):,} "
        f"written over {executions} executions)"
    )


def backfill_line(view: Mapping[str, Any]) -> str:
    """``backfill 3 of dated running: 2 done, 1 running, 4 left`` (and never started)."""
    counts = [
        plural(len(view.get("done", [])), "date") + " done",
        f"{len(view.get('running', []))} running",
        f"{len(view.get('left', []))} left",
    ]
    if view.get("not_started"):
        counts.append(f"{len(view['not_started'])} never started")
    return f"backfill {view.get('backfill')} of {view.get('job')} {view.get('state')}: " + (
        ", ".join(counts)
    )


def render_backfills(console: Console, result: Mapping[str, Any]) -> None:
    """Each backfill of the daemon: its state and counts, then its dates."""
    backfills = result.get("backfills", [])
    if not backfills:
        console.print("no backfills")
        return
    for view in backfills:
        console.print(backfill_line(view), highlight=False)
        table = Table(show_edge=False, pad_edge=False)
        for column in ("DATE", "STATE", "EXECUTION"):
            table.add_column(column)
        rows = [
            (item["date"], status_text(item.get("status")), str(item.get("execution_id") or ""))
            for item in view.get("done", [])
        ]
        rows += [
            (item["date"], Text("running", style="cyan"), str(item.get("execution_id") or ""))
            for item in view.get("running", [])
        ]
        rows += [(day, Text("left", style="dim"), "") for day in view.get("left", [])]
        rows += [
            (item["date"], Text(f"never started ({item.get('reason')})", style="red"), "")
            for item in view.get("not_started", [])
        ]
        for row in sorted(rows, key=lambda row: str(row[0])):
            table.add_row(*row)
        console.print(table)


def make_console() -> Console:
    """A console for stdout: on a terminal as wide as it is; piped, wide enough that rows do
    not wrap (for grep and friends) unless ``COLUMNS`` says otherwise."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=200)
    return console


def executions_table(executions: list[Mapping[str, Any]], now: datetime | None = None) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    columns = ("ID", "JOB", "PARAMS", "STATUS", "NODE", "START", "DURATION")
    for column in (*columns, "PROGRESS / MESSAGE"):
        table.add_column(
            column,
            justify="right" if column == "ID" else "left",
            no_wrap=column in ("ID", "STATUS", "START", "DURATION"),
        )
    for execution in executions:
        table.add_row(
            str(execution["id"]),
            str(execution["job"]),
            compact(execution.get("params", {})),
            attempt_status(execution),
            str(execution.get("node") or ""),
            local_time(execution.get("start_time") or execution.get("create_time")),
            duration(elapsed(execution.get("start_time"), execution.get("end_time"), now)),
            progress(execution, now) or first_line(execution.get("exit_message")),
        )
    return table


def first_line(message: str | None, width: int = _MESSAGE_WIDTH) -> str:
    """The first non-blank line of an exit message (a traceback's is its error), shortened
    to ``width`` characters: why a run failed, at a glance; ``ctl execution`` has the rest."""
    line = next((line.strip() for line in (message or "").splitlines() if line.strip()), "")
    return line if len(line) <= width else line[: width - 1] + "…"


def custom_exit_status(step: Mapping[str, Any]) -> str:
    """A step's exit status when it is not its status (a flow routes on it), else ''."""
    exit_status = str(step.get("exit_status") or "")
    return "" if exit_status == step.get("status") else exit_status


def steps_table(steps: list[Mapping[str, Any]], now: datetime | None = None) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    columns = ("STEP", "STATUS", "EXIT STATUS", "READ", "WRITTEN", "FILTERED", "SKIPPED")
    for column in (*columns, "COMMITS", "ROLLBACKS", "DURATION"):
        table.add_column(
            column,
            justify="left" if column in ("STEP", "STATUS", "EXIT STATUS") else "right",
            no_wrap=column != "STEP",
        )
    for step in steps:
        skipped = sum(
            int(step.get(key, 0))
            for key in ("read_skip_count", "process_skip_count", "write_skip_count")
        )
        table.add_row(
            str(step["name"]),
            status_text(step.get("status")),
            custom_exit_status(step),
            f"{int(step.get('read_count', 0)):,}",
            f"{int(step.get('write_count', 0)):,}",
            f"{int(step.get('filter_count', 0)):,}",
            f"{skipped:,}",
            f"{int(step.get('commit_count', 0)):,}",
            f"{int(step.get('rollback_count', 0)):,}",
            duration(elapsed(step.get("start_time"), step.get("end_time"), now)),
        )
    return table


def render_execution(console: Console, execution: Mapping[str, Any]) -> None:
    """One execution in detail: its fields, then a table of its steps."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    fields.add_row("execution", str(execution["id"]))
    fields.add_row("job", str(execution["job"]))
    fields.add_row("instance", str(execution.get("instance_id")))
    fields.add_row("params", compact(execution.get("params", {})))
    fields.add_row("status", status_text(execution.get("status")))
    fields.add_row("exit status", str(execution.get("exit_status") or ""))
    fields.add_row("attempt", str(execution.get("attempt") or 1))
    fields.add_row("node", str(execution.get("node") or ""))
    fields.add_row("created", local_time(execution.get("create_time")))
    fields.add_row("started", local_time(execution.get("start_time")))
    fields.add_row("ended", local_time(execution.get("end_time")))
    fields.add_row(
        "duration", duration(elapsed(execution.get("start_time"), execution.get("end_time")))
    )
    if execution.get("status") in RUNNING:
        fields.add_row("progress", progress(execution))
    if execution.get("exit_message"):
        fields.add_row("exit message", Text(str(execution["exit_message"])))
    console.print(fields)
    if execution.get("steps"):
        console.print()
        console.print(steps_table(execution["steps"]))
    if execution.get("history"):
        console.print()
        console.print(history_table(execution["history"]))


def attempt_status(execution: Mapping[str, Any]) -> Text:
    """The status, with the attempt when it is a restart or retry: ``FAILED (attempt 2)``."""
    text = status_text(execution.get("status"))
    attempt = int(execution.get("attempt") or 1)
    if attempt > 1:
        text.append(f" (attempt {attempt})")
    return text


def history_table(history: list[Mapping[str, Any]]) -> Table:
    """Every status change: when, of what (the execution, or a step), where, and why."""
    table = Table(show_edge=False, pad_edge=False)
    for column in ("TIME", "STEP", "STATUS", "NODE", "MESSAGE"):
        table.add_column(column, no_wrap=column != "MESSAGE")
    for change in history:
        table.add_row(
            local_time(change.get("time")),
            str(change.get("step") or "(execution)"),
            status_text(change.get("status")),
            str(change.get("node") or ""),
            first_line(change.get("message")),
        )
    return table


def render_executions(console: Console, result: Mapping[str, Any]) -> None:
    executions = result.get("executions", [])
    if not executions:
        console.print("no executions")
        return
    console.print(executions_table(executions))


def render_ping(console: Console, result: Mapping[str, Any]) -> None:
    console.print(ping_line(result))


def render_nodes(console: Console, result: Mapping[str, Any]) -> None:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("NODE", "HOST", "PID", "STATE", "LAST HEARTBEAT", "STARTED", "CLOCK SKEW"):
        table.add_column(column, justify="right" if column == "PID" else "left")
    for node in result.get("nodes", []):
        name = str(node["name"]) + (" (this)" if node.get("this") else "")
        table.add_row(
            name,
            str(node.get("host", "")),
            str(node.get("pid", "")),
            Text("live", style="green") if node.get("live") else Text("lost", style="red"),
            local_time(node.get("heartbeat")),
            local_time(node.get("started_at")),
            signed_seconds(node.get("clock_skew_seconds")),
        )
    console.print(table)


def signed_seconds(value: float | None) -> str:
    """``+0.250s``, ``-1.000s``; a skew that rounds to nothing is ``+0.000s``, not ``-0.000s``."""
    return f"{round(float(value or 0), 3) + 0.0:+.3f}s"


def render_jobs(console: Console, result: Mapping[str, Any]) -> None:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("JOB", "STEPS", "RESTARTABLE", "PARAMETERS"):
        table.add_column(column)
    for job in result.get("jobs", []):
        table.add_row(
            str(job["name"]),
            ", ".join(job.get("steps", [])),
            "yes" if job.get("restartable") else "no",
            str(job.get("params_model") or ""),
        )
    console.print(table)


def render_schedules(console: Console, result: Mapping[str, Any]) -> None:
    schedules = result.get("schedules", [])
    if not schedules:
        console.print("no schedules")
        return
    table = Table(show_edge=False, pad_edge=False)
    columns = ("SCHEDULE", "JOB", "TRIGGER", "CALENDAR", "STATE", "NEXT FIRE", "LAST FIRE")
    for column in (*columns, "OUTCOME", "WAITING"):
        table.add_column(column)
    for schedule in schedules:
        table.add_row(
            str(schedule["name"]),
            str(schedule.get("job")),
            str(schedule.get("trigger")),
            str(schedule.get("calendar") or ""),
            Text("paused", style="yellow") if schedule.get("paused") else Text("active"),
            local_time(schedule.get("next_fire_time"), schedule.get("timezone")),
            local_time(schedule.get("last_fire"), schedule.get("timezone")),
            str(schedule.get("last_outcome") or ""),
            "\n".join(waiting_text(fire) for fire in schedule.get("waiting", [])),
        )
    console.print(table)


def waiting_text(fire: Mapping[str, Any]) -> str:
    """A waiting fire in one line: its business date, the runs it waits for, until when."""
    runs = "; ".join(
        f"{each.get('job')} {compact(each.get('params', {}))}" for each in fire.get("waits_for", [])
    )
    until = f" until {local_time(fire['wait_until'])}" if fire.get("wait_until") else ""
    return f"{fire.get('business_date') or local_time(fire.get('fire_time'))}: after {runs}{until}"


def render_started(console: Console, execution: Mapping[str, Any]) -> None:
    console.print(
        f"execution {execution['id']} of {execution['job']} "
        f"{compact(execution.get('params', {}))}: {execution.get('status')}"
    )


def render_stopped(console: Console, result: Mapping[str, Any]) -> None:
    stopped = result.get("stopped", [])
    for backfill in result.get("backfills", []):
        console.print(
            f"backfill {backfill.get('backfill')} of {backfill.get('job')} "
            f"{backfill.get('state')}: {backfill.get('summary')}"
        )
    _listed(console, stopped, "nothing running to stop", "asked {} execution(s) to stop:")


def render_schedule_state(console: Console, result: Mapping[str, Any]) -> None:
    state = "paused" if result.get("paused") else "resumed"
    console.print(f"schedule {result.get('schedule')} {state}")


def render_fire(console: Console, result: Mapping[str, Any]) -> None:
    line = f"schedule {result.get('schedule')} fired: {result.get('outcome')}"
    if result.get("execution_id") is not None:
        line += f", execution {result['execution_id']} {compact(result.get('params'))}"
    if result.get("message"):
        line += f" ({result['message']})"
    console.print(line)


def render_backfill(console: Console, result: Mapping[str, Any]) -> None:
    dates = result.get("dates", [])
    skipped = result.get("skipped", [])
    verb = "would start" if result.get("dry_run") else "starting"
    number = f" {result['backfill']}" if result.get("backfill") is not None else ""
    calendar = f" (business days of {result['calendar']})" if result.get("calendar") else ""
    console.print(
        f"backfill{number} of {result.get('job')} from {result.get('from')} to {result.get('to')}"
        f"{calendar}: {verb} {len(dates)} date(s), {result.get('max_concurrent')} at a time; "
        f"{len(skipped)} skipped"
    )
    table = Table(show_edge=False, pad_edge=False)
    for column in ("DATE", "ACTION", "EXECUTION"):
        table.add_column(column)
    rows = [(day, Text("run", style="cyan"), "") for day in dates]
    rows += [
        (
            item["date"],
            Text(f"skip ({': '.join(_skip_reason(item))})", style="dim"),
            str(item.get("execution_id", "")),
        )
        for item in skipped
    ]
    for row in sorted(rows, key=lambda row: str(row[0])):
        table.add_row(*row)
    if rows:
        console.print(table)


def _skip_reason(item: Mapping[str, Any]) -> list[str]:
    """Why a backfill skips a date: its status, and for a closing day the holiday."""
    return [str(item.get("status"))] + ([str(item["reason"])] if item.get("reason") else [])


def render_calendar(console: Console, result: Mapping[str, Any]) -> None:
    days = result.get("days", [])
    console.print(
        f"calendar {result.get('calendar')} from {result.get('from')} to {result.get('to')}: "
        f"{result.get('business_days')} business day(s), "
        f"{len(days) - int(result.get('business_days') or 0)} closed"
    )
    table = Table(show_edge=False, pad_edge=False)
    for column in ("DATE", "DAY", "BUSINESS DAY", "CLOSED FOR"):
        table.add_column(column, no_wrap=column != "CLOSED FOR")
    for day in days:
        when = datetime.fromisoformat(str(day["date"]))
        table.add_row(
            str(day["date"]),
            when.strftime("%a"),
            Text("yes", style="green") if day.get("business") else Text("closed", style="yellow"),
            str(day.get("reason") or ""),
        )
    console.print(table)


def render_reload(console: Console, result: Mapping[str, Any]) -> None:
    if result.get("accepted"):
        schedules = plural(int(result.get("schedules") or 0), "schedule")
        watches = plural(int(result.get("watches") or 0), "watch", "watches")
        console.print(f"config reloaded: {schedules}, {watches}")


def render_recover(console: Console, result: Mapping[str, Any]) -> None:
    _listed(
        console,
        result.get("recovered", []),
        "nothing to recover",
        "{} execution(s) marked FAILED by recovery:",
    )


def _listed(console: Console, executions: list[Any], none: str, heading: str) -> None:
    """``none`` if there are no executions, else ``heading`` (with their number) and them."""
    if not executions:
        console.print(none)
        return
    console.print(heading.format(len(executions)))
    console.print(executions_table(executions))


def render_log(console: Console, result: Mapping[str, Any]) -> None:
    console.out(result.get("text", ""), end="", highlight=False)


def render_purge(console: Console, result: Mapping[str, Any]) -> None:
    verb = "would purge" if result.get("dry_run") else "purged"
    executions = plural(int(result.get("executions") or 0), "execution")
    steps = plural(int(result.get("step_executions") or 0), "step execution")
    instances = plural(int(result.get("instances") or 0), "instance")
    days = plural(int(result.get("days") or 0), "day")
    console.print(
        f"{verb} {executions} ({steps}) and {instances} of complete jobs that ended "
        f"before {local_time(result.get('before'))} ({days} ago)"
    )
