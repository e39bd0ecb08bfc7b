"""A throw-away MariaDB server for the test session.

Plain module (no pytest import) so scripts and benchmarks can use it too::

    server = MariaDBServer()
    server.start()
    url = server.create_database("t1")   # mysql+pymysql://root@localhost/t1?unix_socket=...
    ...
    server.stop()

The server lives in a temporary directory, listens only on a unix socket, and flushes its
log about once a second instead of at every commit: only the server's clients are ever killed
in tests, never the server itself. As root, ``mariadbd`` runs as the ``mysql`` user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["MariaDBNotFound", "MariaDBServer", "MariaDBStartError"]

_RUN_AS = "mysql"
_SERVER_PATHS = ("/usr/sbin/mariadbd", "/usr/bin/mariadbd")


class MariaDBNotFound(RuntimeError):
    """The MariaDB server (mariadbd, mariadb-install-db) is not installed."""


class MariaDBStartError(RuntimeError):
    """mariadb-install-db or mariadbd failed; the message carries their logs."""


def _find(name: str, extra: tuple[str, ...] = ()) -> str:
    found = shutil.which(name) or next((p for p in extra if os.access(p, os.X_OK)), None)
    if found is None:
        raise MariaDBNotFound(
            f"{name} not found: install the MariaDB server, e.g. `apt-get install mariadb-server`"
        )
    return found


class MariaDBServer:
    """A MariaDB server in a temp dir, reachable through a unix socket as ``root``.

    ``server_options`` are added to mariadbd's command line (``--version=10.5.0-MariaDB``
    makes it report an older version; ``--character-set-server=utf8mb3`` gives new
    databases that character set).
    """

    def __init__(self, *server_options: str) -> None:
        self.install_db = _find("mariadb-install-db")
        self.mariadbd = _find("mariadbd", _SERVER_PATHS)
        self.server_options = server_options
        self.tmpdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0

    @property
    def socket(self) -> str:
        assert self.tmpdir is not None, "the server is not started"
        return str(self.tmpdir / "mysqld.sock")

    def _parent_dir(self) -> str | None:
        """/dev/shm when it has room (the data directory is throw-away), else /tmp as root
        (the mysql user must reach it), else the default."""
        env = os.environ.get("BATCHD_MARIADB_TMPDIR")
        if env:
            return env
        try:
            st = os.statvfs("/dev/shm")
            if st.f_bavail * st.f_frsize >= 1 << 30 and os.access("/dev/shm", os.W_OK | os.X_OK):
                return "/dev/shm"
        except OSError:
            pass
        return "/tmp" if self._as_root else None

    def _log_tail(self, limit: int = 4000) -> str:
        log = self.tmpdir / "server.log" if self.tmpdir else None
        if log is not None and log.exists():
            return log.read_text(errors="replace")[-limit:]
        return "(no server log)"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> MariaDBServer:
        """mariadb-install-db + mariadbd; returns once the server accepts connections."""
        self.tmpdir = Path(tempfile.mkdtemp(prefix="batchd-mariadb-", dir=self._parent_dir()))
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _user_options(self) -> list[str]:
        return [f"--user={_RUN_AS}"] if self._as_root else []

    def _start(self, timeout: float) -> None:
        assert self.tmpdir is not None
        if self._as_root:
            import pwd

            pw = pwd.getpwnam(_RUN_AS)
            os.chown(self.tmpdir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.tmpdir, 0o700)
        datadir = self.tmpdir / "data"
        r = subprocess.run(
            [
                self.install_db,
                "--no-defaults",
                f"--datadir={datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *self._user_options(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=self.tmpdir,
        )
        if r.returncode != 0:
            raise MariaDBStartError(
                f"mariadb-install-db failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
            )
        self.process = subprocess.Popen(
            [
                self.mariadbd,
                "--no-defaults",
                f"--datadir={datadir}",
                f"--socket={self.socket}",
                "--skip-networking",
                f"--pid-file={self.tmpdir / 'mysqld.pid'}",
                f"--log-error={self.tmpdir / 'server.log'}",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-doublewrite=0",
                "--innodb-buffer-pool-size=128M",
                "--max-connections=500",
                "--skip-log-bin",
                *self._user_options(),
                *self.server_options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.tmpdir,
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise MariaDBStartError(
                    f"mariadbd exited ({self.process.returncode}):\n{self._log_tail()}"
                )
            try:
                self.connect().close()
                return
            except pymysql.err.OperationalError as e:
                if time.monotonic() > deadline:
                    raise MariaDBStartError(
                        f"server did not accept connections within {timeout}s: {e}\n"
                        f"--- server log ---\n{self._log_tail()}"
                    ) from e
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server at once and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.process = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = None

    def __enter__(self) -> MariaDBServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------
    def connect(self, database: str | None = None, **kwargs: Any) -> Any:
        """A PyMySQL connection as root (autocommit)."""
        import pymysql

        return pymysql.connect(
            unix_socket=self.socket,
            user="root",
            database=database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=5,
            **kwargs,
        )

    def execute(self, *statements: str, database: str | None = None) -> list[Any]:
        """Run statements as root; the rows of the last one."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
                return list(cursor.fetchall())
        finally:
            conn.close()

    def url(self, database: str, user: str = "root", password: str = "") -> str:
        """A SQLAlchemy URL for the database, through the unix socket."""
        secret = f":{password}" if password else ""
        return f"mysql+pymysql://{user}{secret}@localhost/{database}?unix_socket={self.socket}"

    def create_database(
        self, name: str, template: str | None = None, charset: str = "utf8mb4"
    ) -> str:
        """CREATE DATABASE name; with ``template`` its tables and rows are copied (MariaDB has
        no CREATE DATABASE ... TEMPLATE: a migration per test would cost more). Returns the
        database's SQLAlchemy URL."""
        self.execute(f"CREATE DATABASE `{name}` CHARACTER SET {charset}")
        if template:
            conn = self.connect(template)
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SHOW TABLES")
                    tables = [row[0] for row in cursor.fetchall()]
                    ddl = []
                    for table in tables:
                        cursor.execute(f"SHOW CREATE TABLE `{table}`")
                        ddl.append(cursor.fetchone()[1])
                    cursor.execute(f"USE `{name}`")
                    cursor.execute("SET foreign_key_checks = 0")
                    for statement in ddl:
                        cursor.execute(statement)
                    for table in tables:
                        cursor.execute(
                            f"INSERT INTO `{name}`.`{table}` SELECT * FROM `{template}`.`{table}`"
                        )
            finally:
                conn.close()
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS `{name}`")
