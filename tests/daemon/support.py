"""Helpers of the control socket tests: the real daemon as a subprocess (``DaemonProcess`` of
test_daemon), its config with a ``[control]`` section of our choosing, and a small client
that speaks the protocol over a real Unix socket."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.test_daemon import ROOT, DaemonProcess, Daemons, daemons, wait_until

__all__ = [
    "ROOT",
    "Control",
    "ControlError",
    "DaemonProcess",
    "Daemons",
    "Launched",
    "control_config",
    "daemons",
    "launch",
    "launched",
    "table_counts",
    "wait_until",
]

JOB_MODULES = '["tests.daemon.daemon_jobs", "tests.daemon.control_jobs"]'


def control_config(
    tmp: Path,
    extra: str = "",
    *,
    socket_path: Path | None = None,
    mode: str | None = None,
    allowed_users: list[str] | None = None,
    allowed_groups: list[str] | None = None,
    **settings: str,
) -> str:
    """A daemon config on a SQLite file in ``tmp``, with the control socket as asked
    (default ``tmp/control.sock``) and the metrics listener off."""
    values = {
        "database_url": f'"sqlite:///{tmp / "batchd.db"}"',
        "jobs": JOB_MODULES,
        "stop_grace": '"5s"',
        "heartbeat": '"0.5s"',
        "lease": '"5s"',
        "log_dir": f'"{tmp / "logs"}"',  # per-execution logs, beside the database
        **settings,
    }
    lines = [f"{key} = {value}" for key, value in values.items()]
    lines += ["[control]", f'socket = "{socket_path or tmp / "control.sock"}"']
    if mode is not None:
        lines.append(f'mode = "{mode}"')
    if allowed_users is not None:
        lines.append(f"allowed_users = {json.dumps(allowed_users)}")
    if allowed_groups is not None:
        lines.append(f"allowed_groups = {json.dumps(allowed_groups)}")
    lines += ["[metrics]", "listen = ''"]
    return "\n".join(lines) + "\n" + extra


class ControlError(AssertionError):
    """An error response where a test expected success."""


class Control:
    """A connection to the control socket that sends requests and reads responses.

    It connects at the first request (the daemon drops a client that connects and then
    says nothing for a few seconds), or at once with :meth:`open`.
    """

    def __init__(self, path: Path, timeout: float = 15) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self.buffer = b""

    def open(self) -> Control:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(self.timeout)
            self._sock.connect(str(self.path))
        return self

    @property
    def sock(self) -> socket.socket:
        return self.open()._sock  # type: ignore[return-value]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self) -> dict[str, Any]:
        """The next response line, decoded; AssertionError if the daemon closed first."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed; pending {self.buffer[:200]!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        response = json.loads(line)
        assert isinstance(response, dict), response
        return response

    def request(self, message: dict[str, Any] | bytes) -> dict[str, Any]:
        """Send one request (an object, or raw bytes to which a newline is added)."""
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.send(data + b"\n")
        return self.read_response()

    def call(self, op: str, **args: Any) -> Any:
        """The result of a request that must succeed."""
        response = self.request({"v": 1, "op": op, **args})
        if not response["ok"]:
            raise ControlError(f"{op} {args}: {response['error']}")
        return response["result"]

    def error(self, op: str, **args: Any) -> dict[str, str]:
        """The error of a request that must fail."""
        response = self.request({"v": 1, "op": op, **args})
        assert response["ok"] is False, response
        error: dict[str, str] = response["error"]
        assert set(error) == {"type", "message"}, error
        return error

    def wait_for_status(self, execution_id: int, *statuses: str, timeout: float = 20) -> Any:
        """Poll ``execution`` until its status is one of ``statuses``; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            execution = self.call("execution", id=execution_id)
            if execution["status"] in statuses:
                return execution
            if time.monotonic() > deadline:
                raise AssertionError(f"execution {execution_id} still {execution['status']}")
            time.sleep(0.05)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


@dataclass
class Launched:
    daemon: DaemonProcess
    socket: Path
    database: Path

    def connect(self) -> Control:
        return Control(self.socket)


Launch = Callable[..., Launched]


@pytest.fixture
def launch(tmp_path: Path, daemons: Daemons) -> Launch:
    """Start the real daemon with a config from :func:`control_config` and wait for READY=1;
    every daemon is stopped at the end of the test."""

    def start(
        config: str | None = None, env: dict[str, str] | None = None, **options: Any
    ) -> Launched:
        text = config if config is not None else control_config(tmp_path, **options)
        daemon = daemons.start(tmp_path, text, env)
        daemon.notify.wait_for("READY=1")
        socket_path = options.get("socket_path") or tmp_path / "control.sock"
        return Launched(daemon, Path(socket_path), tmp_path / "batchd.db")

    return start


@pytest.fixture
def launched(launch: Launch) -> Launched:
    """The real daemon of the default :func:`control_config`, READY."""
    return launch()


def table_counts(database: Path) -> dict[str, int]:
    """Rows in every table of a SQLite file (read with sqlite3: nothing batchd caches)."""
    conn = sqlite3.connect(database)
    try:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return {
            table: conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables
        }
    finally:
        conn.close()
