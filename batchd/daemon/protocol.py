"""The control socket's protocol: JSON lines, one request and one response per line.

A request is a JSON object ``{"v": 1, "op": "<operation>", <arguments>...}`` on one line of at
most :data:`MAX_REQUEST_BYTES` bytes; ``v`` may be left out (it defaults to 1). A response is
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"type": ..., "message": ...}}``.

:data:`OPERATIONS` is the one list of operations: for each, its arguments, whether it changes
anything, its one-line help and the function of :mod:`batchd.ctl_render` that shows its
result. The server (its handlers in :mod:`batchd.daemon.handlers`), the metrics' ``op`` label,
``batchd ctl`` and its commands are all derived from it.

This module parses and validates requests (:func:`parse_request`, which raises
:class:`ProtocolError` with the error type to send) and turns records into their JSON form
(:func:`execution_view`). It does no I/O: the server is ``batchd.daemon.control``, the client
``batchd.ctl``. It imports nothing heavy, so that ``batchd ctl`` can read the table cheaply.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from batchd.errors import ProtocolError as ProtocolError
from batchd.model.status import BatchStatus

if TYPE_CHECKING:
    from batchd.model import JobExecution, StepExecution
    from batchd.repository.nodes import NodeRecord
    from batchd.repository.status_history import StatusChange

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 65536  # a request line longer than this (newline excluded) is refused
MAX_LIMIT = 1000  # most executions one ``executions`` request returns
DEFAULT_LIMIT = 50
MAX_BACKFILL_DAYS = 3660  # about ten years: a typo in a year must not start 100,000 runs
MAX_CALENDAR_DAYS = 3660  # most days one ``calendar`` request lists (about ten years)
DEFAULT_CALENDAR_DAYS = 31  # days listed from --from when --to is not given
MAX_BACKFILL_CONCURRENCY = 64
DEFAULT_BACKFILL_CONCURRENCY = 2
MAX_PURGE_DAYS = 100_000
_MAX_ID = 2**63 - 1  # ids are BIGINT; a larger number names no execution
_MAX_NAME = 200  # job and schedule names are String(200) in the repository
_SHOWN = 60  # characters of a bad value repeated in an error message
PROGRESS_KEY = "batchd.progress"  # batchd.items.progress.PROGRESS_KEY (not imported: light)

# Error types the protocol itself sends (errors of batchd keep their class name).
BAD_REQUEST = "BadRequest"
REQUEST_TOO_LARGE = "RequestTooLarge"
UNKNOWN_OPERATION = "UnknownOperation"
UNSUPPORTED_VERSION = "UnsupportedVersion"
PERMISSION_DENIED = "PermissionDenied"
BUSY = "Busy"
INTERNAL_ERROR = "InternalError"

# The ``op`` reported to listeners (the metrics' label) for a request that names no known
# operation or cannot be read, and for a peer that is refused.
INVALID_OP = "invalid"
DENIED_OP = "denied"


def shown(value: Any) -> str:
    """A short ``repr`` of a value from a request, for error messages."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


# ------------------------------------------------------------------------------ arguments

Check = Callable[[str, Any], Any]


def _bad(name: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(BAD_REQUEST, f"argument {name!r} must be {expected}, not {shown(value)}")


def _name(name: str, value: Any) -> str:
    """A job or schedule name: a non-empty string without control characters."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(name, "a non-empty string", value)
    if len(value) > _MAX_NAME or not value.isprintable():
        raise _bad(name, f"a printable name of at most {_MAX_NAME} characters", value)
    return value


def _execution_id(name: str, value: Any) -> int:
    """An execution id: a positive integer, or a string of digits."""
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_ID:
        raise _bad(name, "an execution id (a positive integer)", value)
    return value


def _backfill_id(name: str, value: Any) -> int:
    """A backfill id (as the ``backfill`` operation answered it): a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_ID:
        raise _bad(name, "a backfill id (a positive integer)", value)
    return value


def _job_or_id(name: str, value: Any) -> str | int:
    """DESIGN §3.1: an int or a string of digits is an execution id, else a job name."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _execution_id(name, value)
    if isinstance(value, str) and value.strip().isdigit():
        return _execution_id(name, value)
    if not isinstance(value, str):
        raise _bad(name, "a job name or an execution id", value)
    return _name(name, value)


def _params(name: str, value: Any) -> dict[str, Any] | str:
    """Job parameters: a JSON object, or a string holding one (the job validates it)."""
    if isinstance(value, dict | str):
        return value
    raise _bad(name, "a JSON object (or a string of one)", value)


def _object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(name, "a JSON object", value)
    return value


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(name, "true or false", value)
    return value


def _status(name: str, value: Any) -> BatchStatus:
    if isinstance(value, str) and value in BatchStatus.__members__:
        return BatchStatus(value)
    raise _bad(name, "one of " + ", ".join(BatchStatus.__members__), value)


def _iso_date(name: str, value: Any) -> date:
    if isinstance(value, str) and len(value) <= 10:
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise _bad(name, "an ISO date like 2026-11-21", value)


def _integer(low: int, high: int) -> Check:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _bad(name, f"an integer from {low} to {high}", value)
        return value

    return check


@dataclass(frozen=True)
class Arg:
    """One argument of an operation: how to check it, whether it must be given, its default
    and, when the wire name is a Python keyword, the name the handler receives it as."""

    check: Check
    required: bool = False
    default: Any = None
    dest: str | None = None


@dataclass(frozen=True)
class Operation:
    """One operation: ``summary`` is the help of its ``batchd ctl`` command; ``args`` its
    arguments, ``one_of`` those of which exactly one is given; ``read_only`` operations
    change nothing (the server does not log them at INFO level: monitoring polls them);
    ``renderer`` names the function of :mod:`batchd.ctl_render` that shows the result."""

    summary: str
    renderer: str
    args: Mapping[str, Arg] = field(default_factory=dict)
    one_of: tuple[str, ...] = ()
    read_only: bool = False


_SCHEDULE = {"schedule": Arg(_name, required=True)}
_EXECUTION_ID = {"id": Arg(_execution_id, required=True)}

OPERATIONS: dict[str, Operation] = {
    "ping": Operation(
        "Is the daemon up? Its version, pid, uptime and database state.",
        "render_ping",
        read_only=True,
    ),
    "nodes": Operation(
        "The nodes sharing the repository: live or lost, last heartbeat, clock skew.",
        "render_nodes",
        read_only=True,
    ),
    "jobs": Operation("The registered jobs.", "render_jobs", read_only=True),
    "schedules": Operation(
        "The schedules, with their next and last fires.", "render_schedules", read_only=True
    ),
    "executions": Operation(
        "Executions, newest first, with the progress of running ones.",
        "render_executions",
        {
            "job": Arg(_name),
            "status": Arg(_status),
            "limit": Arg(_integer(1, MAX_LIMIT), default=DEFAULT_LIMIT),
        },
        read_only=True,
    ),
    "execution": Operation(
        "One execution and its steps (with --history, every status change).",
        "render_execution",
        {**_EXECUTION_ID, "history": Arg(_boolean, default=False)},
        read_only=True,
    ),
    "log": Operation(
        "The log of an execution run in a worker process, from byte OFFSET on.",
        "render_log",
        {**_EXECUTION_ID, "offset": Arg(_integer(0, 2**62), default=0)},
        read_only=True,
    ),
    "start": Operation(
        "Start JOB with PARAMS (a JSON object) and/or --param NAME=VALUE; returns at once.",
        "render_started",
        {
            "job": Arg(_name, required=True),
            "params": Arg(_params, default={}),
            # A new instance with the job's incrementer's next run id (Spring's
            # startNextInstance).
            "next": Arg(_boolean, default=False, dest="next_run"),
        },
    ),
    "stop": Operation(
        "Stop the running executions of a job (by name; and its backfills) or one execution "
        "(by id), or a whole backfill (--backfill ID): no further date of it starts.",
        "render_stopped",
        {"job": Arg(_job_or_id), "id": Arg(_execution_id), "backfill": Arg(_backfill_id)},
        one_of=("job", "id", "backfill"),
    ),
    "restart": Operation(
        "Restart a job's newest instance (by name) or an execution's instance (by id).",
        "render_started",
        {"job": Arg(_job_or_id), "id": Arg(_execution_id)},
        one_of=("job", "id"),
    ),
    "abandon": Operation(
        "Mark a STOPPED, FAILED or UNKNOWN execution ABANDONED: it is never restarted.",
        "render_started",
        _EXECUTION_ID,
    ),
    "pause": Operation(
        "Stop firing a schedule until it is resumed.", "render_schedule_state", _SCHEDULE
    ),
    "resume": Operation(
        "Fire a paused schedule on time again.", "render_schedule_state", _SCHEDULE
    ),
    "fire": Operation("Fire a schedule now (paused or not).", "render_fire", _SCHEDULE),
    "backfill": Operation(
        "Run JOB for every date from --from to --to, skipping dates already complete (and, "
        "with --calendar NAME, those that are not business days of that calendar).",
        "render_backfill",
        {
            "job": Arg(_name, required=True),
            "from": Arg(_iso_date, required=True, dest="first"),
            "to": Arg(_iso_date, required=True, dest="last"),
            "param": Arg(_name, default="date"),
            "params": Arg(_object, default={}),
            "max_concurrent": Arg(
                _integer(1, MAX_BACKFILL_CONCURRENCY), default=DEFAULT_BACKFILL_CONCURRENCY
            ),
            "dry_run": Arg(_boolean, default=False),
            "calendar": Arg(_name),
        },
    ),
    "backfills": Operation(
        "The backfills of this daemon (or backfill --id ID): dates done, running and left.",
        "render_backfills",
        {"id": Arg(_backfill_id)},
        read_only=True,
    ),
    "calendar": Operation(
        "The business and closing days (with the holiday's name) of calendar NAME from "
        f"--from (default today) to --to (default {DEFAULT_CALENDAR_DAYS} days on).",
        "render_calendar",
        {
            "name": Arg(_name, required=True),
            "from": Arg(_iso_date, dest="first"),
            "to": Arg(_iso_date, dest="last"),
        },
        read_only=True,
    ),
    "reload": Operation(
        "Reload the config (as SIGHUP does); fails if the new config is bad.", "render_reload"
    ),
    "recover": Operation(
        "Mark FAILED the running executions whose owner is gone.", "render_recover"
    ),
    "purge": Operation(
        "Delete the history of complete instances that ended more than --days days ago.",
        "render_purge",
        {
            "days": Arg(_integer(1, MAX_PURGE_DAYS), required=True),
            "dry_run": Arg(_boolean, default=False),
        },
    ),
}


@dataclass(frozen=True)
class Request:
    """A valid request: its operation and its checked arguments (defaults filled in), by
    the names the operation's handler takes."""

    op: str
    args: dict[str, Any]


def parse_request(line: bytes) -> Request:
    """Parse and check one request line (without its newline). Raises ProtocolError."""
    if len(line) > MAX_REQUEST_BYTES:
        raise ProtocolError(
            REQUEST_TOO_LARGE,
            f"request of {len(line)} bytes is longer than {MAX_REQUEST_BYTES} bytes",
        )
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProtocolError(BAD_REQUEST, f"request is not UTF-8: {error}") from None
    if not text.strip():
        raise ProtocolError(BAD_REQUEST, "empty request: send one JSON object per line")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ProtocolError(BAD_REQUEST, f"request is not valid JSON: {error}") from None
    if not isinstance(message, dict):
        raise ProtocolError(
            BAD_REQUEST, f"request must be a JSON object, not {type(message).__name__}"
        )
    version = message.pop("v", PROTOCOL_VERSION)
    if isinstance(version, bool) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            UNSUPPORTED_VERSION,
            f"protocol version {shown(version)} is not supported (this daemon speaks v=1)",
        )
    if "op" not in message:
        raise ProtocolError(BAD_REQUEST, 'request has no "op" (the operation to carry out)')
    op = message.pop("op")
    if not isinstance(op, str):
        raise ProtocolError(BAD_REQUEST, f'"op" must be a string, not {shown(op)}')
    operation = OPERATIONS.get(op)
    if operation is None:
        raise ProtocolError(
            UNKNOWN_OPERATION,
            f"unknown operation {shown(op)}; known: {', '.join(OPERATIONS)}",
        )
    try:
        args = _check_arguments(op, operation, message)
    except ProtocolError as problem:
        problem.op = op
        raise
    return Request(op, args)


def _check_arguments(op: str, operation: Operation, given: dict[str, Any]) -> dict[str, Any]:
    unknown = [key for key in given if key not in operation.args]
    if unknown:
        takes = ", ".join(operation.args) or "no arguments"
        raise ProtocolError(
            BAD_REQUEST,
            f"unknown argument {shown(unknown[0])} for operation {op!r} (it takes: {takes})",
        )
    if operation.one_of:
        present = [name for name in operation.one_of if given.get(name) is not None]
        if len(present) != 1:
            names = " or ".join(repr(name) for name in operation.one_of)
            raise ProtocolError(BAD_REQUEST, f"operation {op!r} takes exactly one of {names}")
    args: dict[str, Any] = {}
    for name, arg in operation.args.items():
        value = given.get(name)
        if value is None:
            if arg.required:
                raise ProtocolError(BAD_REQUEST, f"operation {op!r} needs the argument {name!r}")
            value = arg.default
        else:
            value = arg.check(name, value)
        args[arg.dest or name] = value
    return args


# ------------------------------------------------------------------------------- responses


def ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error(type_: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"type": type_, "message": message}}


def encode(response: Mapping[str, Any]) -> bytes:
    """One response line."""
    return json.dumps(response, separators=(",", ":"), default=str).encode("utf-8") + b"\n"


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``+00:00`` offset (as ``schedules`` sends its times), or None."""
    return value.astimezone(UTC).isoformat() if value is not None else None


def step_view(step: StepExecution) -> dict[str, Any]:
    """A step as DESIGN §4 sends it; ``progress`` is how far its reader is through its
    input (``unit``, ``done``, ``total``, ``start``: see ``batchd.items.progress``) when
    the reader knows its total, else None."""
    return {
        "name": step.step_name,
        "status": step.status.value,
        "exit_status": step.exit_status or step.status.value,
        **step.counters(),
        "start_time": iso(step.start_time),
        "end_time": iso(step.end_time),
        "exit_message": step.exit_message,
        "progress": step.execution_context.get(PROGRESS_KEY),
    }


def status_change_view(change: StatusChange) -> dict[str, Any]:
    """One status change of an execution (``step`` None: the execution itself)."""
    return {
        "time": iso(change.time),
        "step": change.step_name,
        "status": change.status.value,
        "node": change.node,
        "message": change.message,
    }


def node_view(node: NodeRecord, *, live: bool, this: str) -> dict[str, Any]:
    """A node of the repository as ``nodes`` sends it (``this``: the answering node's name)."""
    return {
        "name": node.name,
        "host": node.host,
        "pid": node.pid,
        "started_at": iso(node.started_at),
        "heartbeat": iso(node.heartbeat),
        "live": live,
        "clock_skew_seconds": node.clock_offset,
        "this": node.name == this,
    }


def execution_view(execution: JobExecution) -> dict[str, Any]:
    """An execution as DESIGN §4 sends it; ``node`` is the owner's host name."""
    return {
        "id": execution.id,
        "job": execution.job_name,
        "instance_id": execution.instance_id,
        "params": execution.params,
        "status": execution.status.value,
        "exit_status": execution.exit_status or execution.status.value,
        "attempt": execution.attempt,
        "create_time": iso(execution.create_time),
        "start_time": iso(execution.start_time),
        "end_time": iso(execution.end_time),
        "exit_message": execution.exit_message,
        "node": execution.node,
        "steps": [step_view(step) for step in execution.step_executions],
    }
