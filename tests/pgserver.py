"""A throw-away PostgreSQL server for the test session.

Plain module (no pytest import) so scripts and benchmarks can use it too::

    server = PostgresServer()
    server.start()
    server.create_database("t1")
    url = server.url("t1")      # postgresql+psycopg://postgres@127.0.0.1:PORT/t1
    ...
    server.stop()

The cluster lives in a temporary directory with fsync and full-page writes off: only the
server's clients are ever killed in tests, never the server itself, so durability is not needed.
As root, every server binary runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from pathlib import Path

from tests.dbserver import DatabaseServer, ServerNotFound, ServerStartError

__all__ = ["PostgresNotFound", "PostgresServer", "PostgresStartError", "find_bindir"]

_RUN_AS = "postgres"


class PostgresNotFound(ServerNotFound):
    """The PostgreSQL server binaries (initdb, pg_ctl) are not installed."""


class PostgresStartError(ServerStartError):
    """initdb or pg_ctl failed; the message carries their logs."""


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl (newest installed version), or raise."""
    candidates: list[Path] = []
    env = os.environ.get("BATCHD_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            candidates.append(Path(out))
        except (subprocess.SubprocessError, OSError):
            pass

    def version(p: str) -> int:
        try:
            return int(Path(p).parent.name)
        except ValueError:
            return 0

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    ]
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    raise PostgresNotFound(
        "PostgreSQL server binaries not found (tried pg_config --bindir and "
        "/usr/lib/postgresql/*/bin); install them, e.g. `apt-get install postgresql`"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer(DatabaseServer):
    """A PostgreSQL cluster in a temp dir, listening on 127.0.0.1 at a free port."""

    run_as = _RUN_AS
    prefix = "batchd-pg-"
    tmpdir_variable = "BATCHD_PG_TMPDIR"
    shm_room = 2 << 30
    start_error = PostgresStartError

    def __init__(self, bindir: Path | str | None = None) -> None:
        super().__init__()
        self.bindir = Path(bindir) if bindir else find_bindir()
        self.port = 0
        self.datadir: Path | None = None

    # -- helpers ---------------------------------------------------------------------------
    def _cmd(self, name: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / name), *args]
        if self._as_root:
            runuser = shutil.which("runuser")
            if runuser:
                return [runuser, "-u", _RUN_AS, "--", *cmd]
            import shlex

            return ["su", _RUN_AS, "-s", "/bin/sh", "-c", shlex.join(cmd)]
        return cmd

    def _run(self, name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._cmd(name, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=self.tmpdir,
        )

    # -- lifecycle -------------------------------------------------------------------------
    def _start(self, timeout: float) -> None:
        assert self.tmpdir is not None
        self.datadir = self.tmpdir / "data"
        r = self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        if r.returncode != 0:
            raise PostgresStartError(
                f"initdb failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
            )

        last_err = ""
        for _attempt in range(3):  # the free port can be taken between probe and bind: retry
            self.port = _free_port()
            opts = " ".join(
                [
                    "-h 127.0.0.1",
                    f"-p {self.port}",
                    f"-k {self.tmpdir}",
                    "-c fsync=off",
                    "-c full_page_writes=off",
                    "-c max_connections=200",
                    "-c max_wal_size=256MB",  # keep the cluster small (it may live in tmpfs)
                    "-c shared_buffers=32MB",
                    "-c log_min_messages=warning",
                ]
            )
            r = self._pg_ctl_start(opts, timeout)
            if r.returncode == 0:
                self._options = opts  # for resume()
                break
            last_err = (
                f"pg_ctl start failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}\n"
                f"--- server log ---\n{self._log_tail()}"
            )
            if "already in use" not in self._log_tail():
                raise PostgresStartError(last_err)
        else:
            raise PostgresStartError(last_err)
        self._wait_ready(timeout)

    def _pg_ctl_start(self, options: str, timeout: float) -> subprocess.CompletedProcess[str]:
        assert self.datadir is not None and self.logfile is not None
        return self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            timeout=timeout + 10,
        )

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        def probe() -> None:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=5) as conn:
                conn.execute("select 1")

        self._wait_until_answering(timeout, probe, psycopg.OperationalError)

    paused = False
    _options = ""

    def pause(self) -> None:
        """Stop the server (``-m fast``), keeping its data: the database goes away."""
        assert self.datadir is not None
        r = self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", "fast", "-w")
        if r.returncode != 0:
            raise PostgresStartError(f"pg_ctl stop failed: {r.stderr}")
        self.paused = True

    def resume(self, timeout: float = 30) -> None:
        """Start the paused server again: same data, same port."""
        r = self._pg_ctl_start(self._options, timeout)
        if r.returncode != 0:
            raise PostgresStartError(f"pg_ctl start failed: {r.stderr}\n{self._log_tail()}")
        self._wait_ready(timeout)
        self.paused = False

    def _halt(self) -> None:
        """``pg_ctl stop -m immediate`` unless the server is paused or never started."""
        if self.datadir is not None and (self.datadir / "postmaster.pid").exists():
            self._run(
                "pg_ctl", "stop", "-D", str(self.datadir), "-m", "immediate", "-w", timeout=60
            )
        self.datadir = None

    # -- databases -------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string (for psycopg.connect)."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """A SQLAlchemy URL for the database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """CREATE DATABASE name [TEMPLATE template]; returns its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            if conn.info.server_version >= 150000:
                # PG 15's default WAL_LOG strategy copies through the WAL: 4x slower for the
                # small databases that tests use (about 20 ms each with FILE_COPY).
                stmt = sql.SQL("{} STRATEGY FILE_COPY").format(stmt)
            conn.execute(stmt)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE name, disconnecting its sessions."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
