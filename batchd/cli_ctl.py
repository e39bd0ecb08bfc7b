"""``batchd ctl``: the control socket's client commands, one per operation of the protocol's
table (:data:`batchd.daemon.protocol.OPERATIONS`).

It only sends a line and shows the answer: nothing here imports the repository, the config
loader or the engine (SQLAlchemy, pydantic).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from batchd.ctl import (
    DEFAULT_TIMEOUT,
    EXIT_ERROR,
    ControlClient,
    ControlError,
    param_value,
    show,
    socket_path,
)
from batchd.daemon.protocol import (
    DEFAULT_BACKFILL_CONCURRENCY,
    DEFAULT_LIMIT,
    MAX_BACKFILL_CONCURRENCY,
    MAX_LIMIT,
    OPERATIONS,
)
from batchd.model.status import BatchStatus


@dataclass
class _CtlOptions:
    as_json: bool = False
    socket: Path | None = None
    config: Path | None = None
    timeout: float = DEFAULT_TIMEOUT


def _ctl_options(function: Callable[..., None]) -> Callable[..., None]:
    """``--json``, ``--socket``, ``--config`` and ``--timeout``, accepted by ``batchd ctl``
    and by each of its commands (``batchd ctl --json executions`` or ``... executions
    --json``); a command's own value wins."""

    @functools.wraps(function)
    def wrapper(
        *args: Any,
        as_json: bool,
        socket_path: Path | None,
        ctl_config: Path | None,
        timeout: float | None,
        **kwargs: Any,
    ) -> None:
        ctx = click.get_current_context()
        options = ctx.find_object(_CtlOptions) or _CtlOptions()
        ctx.obj = _CtlOptions(
            as_json=as_json or options.as_json,
            socket=socket_path or options.socket,
            config=ctl_config or options.config,
            timeout=timeout if timeout is not None else options.timeout,
        )
        function(*args, **kwargs)

    for option in reversed(_CTL_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


_CTL_OPTIONS = [
    click.option("--json", "as_json", is_flag=True, help="Print the raw result as JSON."),
    click.option(
        "--socket",
        "socket_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The control socket (default: control.socket of the config).",
    ),
    click.option(
        "--config",
        "ctl_config",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The daemon's config, to find its socket (or BATCHD_CONFIG).",
    ),
    click.option("--timeout", type=float, help="Seconds to wait for an answer (default 60)."),
]


@click.group("ctl")
@_ctl_options
def ctl() -> None:
    """Talk to the running daemon over its control socket.

    Tables for people, --json for scripts. Exit status 0 on success; 1 with
    "batchd: <Type>: <message>" on stderr when the daemon answers with an error; 69 when it
    cannot be reached. Times are shown in local time (a schedule's in its own time zone),
    each with its zone's abbreviation.
    """


def _options() -> _CtlOptions:
    return click.get_current_context().find_object(_CtlOptions) or _CtlOptions()


def _client(options: _CtlOptions) -> ControlClient:
    """A client of the socket the options name (exits as _call does if there is none)."""
    try:
        return ControlClient(socket_path(options.socket, options.config), options.timeout)
    except ControlError as problem:
        _fail(problem.type, problem.message, problem.exit_status)


def _call(op: str, **args: Any) -> Any:
    """Send one request with the ctl options in effect; print its result; exit non-zero
    with the error on stderr if it fails."""
    options = _options()
    try:
        with _client(options) as client:
            result = client.call(op, **args)
    except ControlError as problem:
        _fail(problem.type, problem.message, problem.exit_status)
    if options.as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        show(op, result)  # rich only for the tables
    return result


def _fail(type_: str, message: str, status: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"batchd: {type_}: {message}", err=True)
    sys.exit(status)


def _key_values(pairs: tuple[str, ...]) -> dict[str, Any]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected NAME=VALUE, not {pair!r}", param_hint="--param")
        values[key] = param_value(value)
    return values


def _params(params_json: str | None, pairs: tuple[str, ...]) -> dict[str, Any]:
    """Parameters from a JSON object argument, with ``--param NAME=VALUE`` over it."""
    values: dict[str, Any] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except ValueError as problem:
            raise click.BadParameter(f"not JSON: {problem}", param_hint="PARAMS") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="PARAMS")
        values.update(loaded)
    values.update(_key_values(pairs))
    return values


PARAM = click.option(
    "--param",
    "param_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A job parameter; VALUE is a JSON scalar when it is one (2, 2.5, true, null, "
    "'\"2\"'), else a string. Repeat for more.",
)


def _ctl_command(op: str) -> Callable[[Callable[..., None]], click.Command]:
    """Register the ``batchd ctl`` command of ``op``; its help is the operation's summary."""
    return ctl.command(op, help=OPERATIONS[op].summary)


@_ctl_command("executions")
@click.argument("job_argument", metavar="[JOB]", required=False)
@click.option("--job", help="Only this job's executions.")
@click.option(
    "--status",
    type=click.Choice([status.value for status in BatchStatus], case_sensitive=False),
    help="Only executions with this status.",
)
@click.option(
    "--limit", type=click.IntRange(1, MAX_LIMIT), default=DEFAULT_LIMIT, show_default=True
)
@_ctl_options
def ctl_executions(
    job_argument: str | None, job: str | None, status: str | None, limit: int
) -> None:
    _call("executions", job=job or job_argument, status=status and status.upper(), limit=limit)


WAIT = click.option(
    "--wait",
    is_flag=True,
    help="Wait until the execution ends; the exit status says how: 0 COMPLETED, 3 FAILED, "
    "4 STOPPED, 5 ABANDONED, 6 UNKNOWN.",
)
FOLLOW = click.option(
    "--follow",
    is_flag=True,
    help="Show its progress until it ends (a bar on a terminal, else lines); exit status as "
    "for --wait.",
)
INTERVAL = click.option(
    "--interval",
    type=click.FloatRange(0.05),
    default=1.0,
    show_default=True,
    help="Seconds between two looks at it (--wait, --follow).",
)


NEXT = click.option(
    "--next",
    "next_run",
    is_flag=True,
    help="Start a new instance with the next run id of the job's incrementer.",
)
HISTORY = click.option(
    "--history", is_flag=True, help="Also every status change, with its time and node."
)


@_ctl_command("start")
@click.argument("job")
@click.argument("params_json", metavar="[PARAMS]", required=False)
@PARAM
@NEXT
@WAIT
@FOLLOW
@INTERVAL
@_ctl_options
def ctl_start(
    job: str,
    params_json: str | None,
    param_pairs: tuple[str, ...],
    next_run: bool,
    wait: bool,
    follow: bool,
    interval: float,
) -> None:
    started = _call(
        "start", job=job, params=_params(params_json, param_pairs), next=next_run or None
    )
    if wait or follow:
        _follow_execution(started["id"], follow, interval)


@_ctl_command("execution")
@click.argument("id", metavar="EXECUTION_ID", type=int)
@HISTORY
@FOLLOW
@INTERVAL
@_ctl_options
def ctl_execution(id: int, history: bool, follow: bool, interval: float) -> None:
    if follow:
        _follow_execution(id, True, interval)
    else:
        _call("execution", id=id, history=history or None)


def _follow_execution(execution_id: int, show: bool, interval: float) -> NoReturn:
    """Poll the execution until it ends (showing its progress if ``show``); exit with the
    status that says how it ended."""
    from batchd.ctl_follow import follow_execution

    options = _options()
    with _client(options) as client:
        _exit_followed(
            lambda: follow_execution(client, execution_id, show, options.as_json, interval)
        )


def _follow_backfill(backfill_id: int, interval: float) -> NoReturn:
    from batchd.ctl_follow import follow_backfill

    with _client(_options()) as client:
        _exit_followed(lambda: follow_backfill(client, backfill_id, interval))


def _exit_followed(following: Callable[[], int]) -> NoReturn:
    try:
        status = following()
    except ControlError as problem:
        _fail(problem.type, problem.message, problem.exit_status)
    except KeyboardInterrupt:  # stops following, not the execution
        sys.exit(130)
    sys.exit(status)


@_ctl_command("backfills")
@click.argument("backfill_id", metavar="[ID]", type=click.IntRange(1), required=False)
@FOLLOW
@INTERVAL
@_ctl_options
def ctl_backfills(backfill_id: int | None, follow: bool, interval: float) -> None:
    if follow:
        if backfill_id is None:
            raise click.UsageError("--follow needs the backfill's ID")
        _follow_backfill(backfill_id, interval)
    _call("backfills", id=backfill_id)


@_ctl_command("stop")
@click.argument("job_or_id", required=False)
@click.option("--backfill", "backfill", type=click.IntRange(1), help="Stop this backfill.")
@_ctl_options
def ctl_stop(job_or_id: str | None, backfill: int | None) -> None:
    if (job_or_id is None) == (backfill is None):
        raise click.UsageError("give a JOB or an execution id, or --backfill ID")
    _call("stop", **({"backfill": backfill} if backfill is not None else {"job": job_or_id}))


@_ctl_command("restart")
@click.argument("job_or_id")
@_ctl_options
def ctl_restart(job_or_id: str) -> None:
    _call("restart", job=job_or_id)


@_ctl_command("backfill")
@click.argument("job")
@click.option("--from", "first", required=True, metavar="DATE", help="First date (ISO).")
@click.option("--to", "last", required=True, metavar="DATE", help="Last date (ISO), included.")
@click.option(
    "--date-param", default="date", show_default=True, help="The parameter that takes the date."
)
@click.option("--params", "params_json", metavar="JSON", help="Other parameters, as JSON.")
@PARAM
@click.option(
    "--max-concurrent",
    type=click.IntRange(1, MAX_BACKFILL_CONCURRENCY),
    default=DEFAULT_BACKFILL_CONCURRENCY,
    show_default=True,
)
@click.option("--dry-run", is_flag=True, help="Only show which dates would run.")
@click.option("--calendar", metavar="NAME", help="Only the business days of this calendar.")
@click.option(
    "--follow",
    is_flag=True,
    help="Show its dates done, running and left until it ends; the exit status is 0 when "
    "every date COMPLETED, 3 when one failed or never started, 4 when it was stopped.",
)
@INTERVAL
@_ctl_options
def ctl_backfill(
    job: str,
    first: str,
    last: str,
    date_param: str,
    params_json: str | None,
    param_pairs: tuple[str, ...],
    max_concurrent: int,
    dry_run: bool,
    calendar: str | None,
    follow: bool,
    interval: float,
) -> None:
    started = _call(
        "backfill",
        job=job,
        param=date_param,
        params=_params(params_json, param_pairs),
        max_concurrent=max_concurrent,
        dry_run=dry_run,
        calendar=calendar,
        **{"from": first, "to": last},
    )
    if follow and started.get("backfill") is not None:
        _follow_backfill(started["backfill"], interval)


@_ctl_command("calendar")
@click.argument("name")
@click.option("--from", "first", metavar="DATE", help="First date (ISO; default today).")
@click.option("--to", "last", metavar="DATE", help="Last date (ISO), included.")
@_ctl_options
def ctl_calendar(name: str, first: str | None, last: str | None) -> None:
    _call("calendar", name=name, **{"from": first, "to": last})


@_ctl_command("reload")
@_ctl_options
def ctl_reload() -> None:
    result = _call("reload")
    if not result.get("accepted"):
        why = result.get("error") or "the new config is bad"
        _fail("ReloadRefused", f"{why}\nbatchd keeps running the config it had")


@_ctl_command("purge")
@click.option("--days", type=click.IntRange(min=1), required=True, help="Keep this many days.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@_ctl_options
def ctl_purge(days: int, dry_run: bool) -> None:
    _call("purge", days=days, dry_run=dry_run)


# Execution ids are positional integers; other required arguments positional strings.
_POSITIONAL = {"id": click.argument("id", metavar="EXECUTION_ID", type=int)}


@_ctl_command("log")
@click.argument("id", metavar="EXECUTION_ID", type=int)
@FOLLOW
@INTERVAL
@click.option(
    "--tail", type=click.IntRange(0), default=None, help="Only the last N lines, at first."
)
@_ctl_options
def ctl_log(id: int, follow: bool, interval: float, tail: int | None) -> None:
    """The log of an execution run in a worker process; with --follow, what it writes
    until it ends."""
    options = _options()
    try:
        with _client(options) as client:
            _print_log(
                lambda offset: client.call("log", id=id, offset=offset), follow, interval, tail
            )
    except ControlError as problem:
        _fail(problem.type, problem.message, problem.exit_status)
    except KeyboardInterrupt:  # stops following, not the execution
        sys.exit(130)


def _print_log(read: Callable[[int], Any], follow: bool, interval: float, tail: int | None) -> None:
    offset, collected, first = 0, [], True
    while True:
        result = read(offset)
        offset = result["offset"]
        if result["text"]:
            collected.append(result["text"])
            continue  # more may be there already: print once caught up
        text = "".join(collected)
        collected.clear()
        if first and tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:]) if tail else ""
        first = False
        sys.stdout.write(text)
        sys.stdout.flush()
        if result["ended"] or not follow:
            return
        time.sleep(interval)


def _derived_command(op: str) -> None:
    """The ``batchd ctl`` command of an operation whose arguments are all required: each one
    positional, sent as it is."""

    def command(**args: Any) -> None:
        _call(op, **args)

    for name in reversed(list(OPERATIONS[op].args)):
        command = _POSITIONAL.get(name, click.argument(name))(command)
    _ctl_command(op)(_ctl_options(command))


# Every operation without a command of its own above gets one from the table.
for _op, _operation in OPERATIONS.items():
    if _op not in ctl.commands:
        assert all(arg.required for arg in _operation.args.values()), _op
        _derived_command(_op)
