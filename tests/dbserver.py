"""What the test session's throw-away database servers share (tests/pgserver.py,
tests/mysqlserver.py): a private temporary directory, the wait until the server answers, the
server log for error messages, and ``with`` support.

Each server gets a directory of its own from ``mkdtemp`` and listens on a port probed free
(PostgreSQL) or on a unix socket inside that directory (MariaDB), so several test processes
(pytest-xdist workers) can each run their own servers side by side.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Self

__all__ = ["DatabaseServer", "ServerNotFound", "ServerStartError"]


class ServerNotFound(RuntimeError):
    """The server's programs are not installed."""


class ServerStartError(RuntimeError):
    """The server could not be set up or started; the message carries its logs."""


class DatabaseServer:
    """A database server living in a temporary directory, removed when it stops.

    Subclasses set the class attributes and implement ``_start`` (set up and launch the
    server in ``self.tmpdir``), ``_halt`` (stop it at once), ``create_database`` and
    ``drop_database``.
    """

    #: The system user the server runs as when the tests run as root.
    run_as: ClassVar[str]
    #: mkdtemp's prefix for the server's directory.
    prefix: ClassVar[str]
    #: The variable that names another parent directory for it.
    tmpdir_variable: ClassVar[str]
    #: The room /dev/shm must have for the server to live there.
    shm_room: ClassVar[int]
    start_error: ClassVar[type[ServerStartError]] = ServerStartError

    def __init__(self) -> None:
        self.tmpdir: Path | None = None
        self._as_root = os.geteuid() == 0

    @property
    def logfile(self) -> Path | None:
        return self.tmpdir / "server.log" if self.tmpdir else None

    def _parent_dir(self) -> str | None:
        """Where the server's directory goes: the variable's directory, else /dev/shm when it
        has room (CREATE DATABASE and commits are much faster on tmpfs, even with fsync off;
        the data is throw-away), else /tmp as root (the server's user must reach it; $TMPDIR
        may be private), else the default."""
        env = os.environ.get(self.tmpdir_variable)
        if env:
            return env
        try:
            st = os.statvfs("/dev/shm")
            if st.f_bavail * st.f_frsize >= self.shm_room and os.access(
                "/dev/shm", os.W_OK | os.X_OK
            ):
                return "/dev/shm"
        except OSError:
            pass
        return "/tmp" if self._as_root else None

    def _log_tail(self, limit: int = 4000) -> str:
        log = self.logfile
        if log is not None and log.exists():
            return log.read_text(errors="replace")[-limit:]
        return "(no server log)"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> Self:
        """Set the server up in a new temporary directory and start it; returns once it
        accepts connections. On failure nothing is left running or on disk."""
        self.tmpdir = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self._parent_dir()))
        try:
            if self._as_root:
                import pwd

                pw = pwd.getpwnam(self.run_as)
                os.chown(self.tmpdir, pw.pw_uid, pw.pw_gid)
            os.chmod(self.tmpdir, 0o700)
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        raise NotImplementedError

    def _wait_until_answering(
        self, timeout: float, probe: Callable[[], object], errors: type[Exception]
    ) -> None:
        """Call ``probe`` until it stops raising ``errors``; after ``timeout`` seconds the
        last error and the server log are raised as ``start_error``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe()
                return
            except errors as e:
                if time.monotonic() > deadline:
                    raise self.start_error(
                        f"server did not accept connections within {timeout}s: {e}\n"
                        f"--- server log ---\n{self._log_tail()}"
                    ) from e
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server at once and remove its directory."""
        if self.tmpdir is not None:
            self._halt()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = None

    def _halt(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------
    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (a copy of ``template``'s schema and rows when given); returns its
        SQLAlchemy URL."""
        raise NotImplementedError

    def drop_database(self, name: str) -> None:
        raise NotImplementedError
