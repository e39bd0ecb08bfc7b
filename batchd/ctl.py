"""``batchd ctl``: the control socket's client.

:class:`ControlClient` sends requests and returns their results (raising
:class:`ControlError` with the daemon's error type and message); :func:`show` prints an
operation's result to people, as one plain line (``ping``) or with the function of
:mod:`batchd.ctl_render` that :func:`renderer` finds. The click
commands are in ``batchd.cli``. This module imports nothing heavy: sending a line must not
cost SQLAlchemy, pydantic or the engine.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from importlib import import_module
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from batchd.daemon.protocol import OPERATIONS, PROTOCOL_VERSION
from batchd.errors import EXIT_ERROR as EXIT_ERROR
from batchd.errors import EXIT_UNAVAILABLE as EXIT_UNAVAILABLE
from batchd.errors import ControlError as ControlError
from batchd.model.status import RUNNING_STATUSES

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_TIMEOUT = 60.0
RUNNING = tuple(sorted(RUNNING_STATUSES))  # the statuses of executions still running


def socket_path(socket_option: Path | None, config: Path | None) -> Path:
    """The socket to talk to: ``--socket``, else ``control.socket`` of the config file
    (``--config`` or ``$BATCHD_CONFIG``, with ``BATCHD_...`` overrides), else the default."""
    if socket_option is not None:
        return socket_option
    from batchd.daemon.config import ConfigError, load_settings  # only when needed: slow

    try:
        return Path(load_settings(config).control.socket)
    except ConfigError as problem:
        raise ControlError("ConfigError", str(problem), unavailable=True) from None


class ControlClient:
    """A connection to the daemon's control socket; one request at a time.

    >>> with ControlClient("/run/batchd/control.sock") as client:
    ...     client.call("stop", job="end_of_day")
    """

    def __init__(self, path: Path | str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(os.fspath(self.path))
        except OSError as problem:
            sock.close()
            raise self._connect_error(problem) from None
        self._sock = sock

    def _connect_error(self, problem: OSError) -> ControlError:
        path = self.path
        if isinstance(problem, FileNotFoundError):
            return ControlError(
                "SocketNotFound",
                f"no control socket at {path}: is batchd running? "
                "(give --socket PATH or --config FILE)",
                unavailable=True,
            )
        if isinstance(problem, ConnectionRefusedError):
            return ControlError(
                "ConnectionRefused",
                f"nothing listens on {path} (batchd is not running there)",
                unavailable=True,
            )
        if isinstance(problem, PermissionError):
            return ControlError(
                "PermissionDenied",
                f"no permission to connect to {path} (ask for control.allowed_users "
                "or control.allowed_groups, or check the socket's mode)",
                unavailable=True,
            )
        if problem.errno == errno.ENOTSOCK or problem.errno == errno.ENOTDIR:
            return ControlError("SocketNotFound", f"{path} is not a socket", unavailable=True)
        return ControlError(
            "ConnectionError", f"cannot connect to {path}: {problem}", unavailable=True
        )

    def call(self, op: str, **args: Any) -> Any:
        """Send one request; return its result or raise :class:`ControlError`. Arguments
        that are None are left out."""
        request = {"v": PROTOCOL_VERSION, "op": op}
        request.update({key: value for key, value in args.items() if value is not None})
        response = self.send_line(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        if not isinstance(response, dict) or "ok" not in response:
            raise ControlError("ProtocolError", f"unexpected response: {response!r}")
        if response["ok"]:
            return response.get("result")
        problem = response.get("error") or {}
        raise ControlError(
            str(problem.get("type", "Error")), str(problem.get("message", "(no message)"))
        )

    def send_line(self, line: bytes) -> Any:
        """Send raw bytes (one request line) and return the decoded response line."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            try:
                self._sock.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon may have answered and hung up (a refused peer): read it
            while b"\n" not in self._buffer:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ControlError(
                        "ConnectionClosed",
                        f"batchd closed the connection on {self.path} without answering",
                        unavailable=True,
                    )
                self._buffer += chunk
        except TimeoutError:
            self.close()
            raise ControlError(
                "Timeout", f"no answer from batchd within {self.timeout:g}s", unavailable=True
            ) from None
        except OSError as problem:
            self.close()
            raise ControlError(
                "ConnectionError", f"talking to {self.path}: {problem}", unavailable=True
            ) from None
        response, _, self._buffer = self._buffer.partition(b"\n")
        try:
            return json.loads(response)
        except ValueError:
            raise ControlError(
                "ProtocolError", f"response is not JSON: {response[:200]!r}"
            ) from None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buffer = b""

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# ``--wait`` and ``--follow``: the exit status says how the execution (or backfill) ended.
OUTCOME_EXIT = {"COMPLETED": 0, "FAILED": 3, "STOPPED": 4, "ABANDONED": 5, "UNKNOWN": 6}


def outcome_exit(status: str) -> int:
    """The exit status of ``ctl ... --wait`` for an execution that ended ``status``."""
    return OUTCOME_EXIT.get(status, OUTCOME_EXIT["UNKNOWN"])


def backfill_exit(view: dict[str, Any]) -> int:
    """A backfill's exit status: 0 when every date COMPLETED; 3 (as FAILED) when a date
    failed; else 4 (as STOPPED) when the backfill was stopped (or its daemon shut down);
    else 3 when a date could not be started; else the worst of its dates' statuses."""
    statuses = [str(item.get("status")) for item in view.get("done", [])]
    if "FAILED" in statuses:
        return OUTCOME_EXIT["FAILED"]
    if view.get("state") != "done":
        return OUTCOME_EXIT["STOPPED"]
    if view.get("not_started"):
        return OUTCOME_EXIT["FAILED"]
    return max((outcome_exit(status) for status in statuses), default=0)


def follow(
    poll: Callable[[], dict[str, Any]],
    running: Callable[[dict[str, Any]], bool],
    show: Callable[[dict[str, Any]], None],
    interval: float,
) -> dict[str, Any]:
    """Call ``poll`` every ``interval`` seconds, showing each answer, until ``running``
    says it has ended; returns the last answer."""
    while True:
        view = poll()
        show(view)
        if not running(view):
            return view
        time.sleep(interval)


def param_value(text: str) -> Any:
    """The value of ``--param NAME=VALUE``: a JSON scalar when VALUE is one (``2``, ``2.5``,
    ``true``, ``false``, ``null``, ``"2"``), else VALUE as a string (``2026-11-21``, ``007``,
    ``NaN``). So ``--param run=2`` starts the same instance as ``'{"run": 2}'``."""
    try:
        value = json.loads(text, parse_constant=_not_a_number)
    except ValueError:
        return text
    if isinstance(value, dict | list) or (isinstance(value, float) and not math.isfinite(value)):
        return text  # objects and arrays go in the PARAMS argument; 1e999 is no number
    return value


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 schedule``, ``2 schedules``, ``0 watches`` (``many``: the plural when it is not
    ``word`` + "s")."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def duration(seconds: float | None) -> str:
    """``42.0s``, ``3m05s``, ``2h03m05s``; empty for None."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def ping_line(result: Mapping[str, Any]) -> str:
    """What ``batchd ctl ping`` prints."""
    return (
        f"batchd {result.get('version')} node {result.get('node')} pid {result.get('pid')}, "
        f"up {duration(result.get('uptime_seconds'))}, database {result.get('database')}"
    )


# Answers shown as one plain line: printed without rich, whose import costs a client more
# than everything else it does (ping is what health checks run, often).
_PLAIN_LINES: dict[str, Callable[[Mapping[str, Any]], str]] = {"ping": ping_line}


def show(op: str, result: Any) -> None:
    """Print the result of ``op`` for people."""
    line = _PLAIN_LINES.get(op)
    if line is not None:
        print(line(result), flush=True)
        return
    from batchd.ctl_render import make_console

    renderer(op)(make_console(), result)


def renderer(op: str) -> Callable[[Console, Any], None]:
    """The function that shows the result of ``op`` to people (rich is imported only now)."""
    function: Callable[[Console, Any], None] = getattr(
        import_module("batchd.ctl_render"), OPERATIONS[op].renderer
    )
    return function
