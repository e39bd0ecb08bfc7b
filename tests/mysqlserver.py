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
from typing import Any

from tests.dbserver import DatabaseServer, ServerNotFound, ServerStartError

__all__ = ["MariaDBNotFound", "MariaDBServer", "MariaDBStartError"]

_RUN_AS = "mysql"
_SERVER_PATHS = ("/usr/sbin/mariadbd", "/usr/bin/mariadbd")


class MariaDBNotFound(ServerNotFound):
    """The MariaDB server (mariadbd, mariadb-install-db) is not installed."""


class MariaDBStartError(ServerStartError):
    """mariadb-install-db or mariadbd failed; the message carries their logs."""


def _find(name: str, extra: tuple[str, ...] = ()) -> str:
    found = shutil.which(name) or next((p for p in extra if os.access(p, os.X_OK)), None)
    if found is None:
        raise MariaDBNotFound(
            f"{name} not found: install the MariaDB server, e.g. `apt-get install mariadb-server`"
        )
    return found


class MariaDBServer(DatabaseServer):
    """A MariaDB server in a temp dir, reachable through a unix socket as ``root``.

    ``server_options`` are added to mariadbd's command line (``--version=10.5.0-MariaDB``
    makes it report an older version; ``--character-set-server=utf8mb3`` gives new
    databases that character set).
    """

    run_as = _RUN_AS
    prefix = "batchd-mariadb-"
    tmpdir_variable = "BATCHD_MARIADB_TMPDIR"
    shm_room = 1 << 30
    start_error = MariaDBStartError

    def __init__(self, *server_options: str) -> None:
        super().__init__()
        self.install_db = _find("mariadb-install-db")
        self.mariadbd = _find("mariadbd", _SERVER_PATHS)
        self.server_options = server_options
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        assert self.tmpdir is not None, "the server is not started"
        return str(self.tmpdir / "mysqld.sock")

    # -- lifecycle -------------------------------------------------------------------------
    def _user_options(self) -> list[str]:
        return [f"--user={_RUN_AS}"] if self._as_root else []

    def _start(self, timeout: float) -> None:
        assert self.tmpdir is not None
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
                f"--log-error={self.logfile}",
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

        def probe() -> None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise MariaDBStartError(
                    f"mariadbd exited ({self.process.returncode}):\n{self._log_tail()}"
                )
            self.connect().close()

        self._wait_until_answering(timeout, probe, pymysql.err.OperationalError)

    def _halt(self) -> None:
        """Kill the server (its clients are what tests kill, never it: no clean shutdown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.process = None

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
