"""What an idle daemon keeps in memory: the modules a real ``batchd run`` has imported once it
is READY, on a repository whose schema is at head, with no web console, no metrics listener,
no calendar, no retry due and no job module that reads files or tables.

Each module named here costs the daemon's resident memory for its whole life (issue 14: idle
RSS); it is imported where it is needed (a migration, a calendar's holidays, a retry's
backoff, the web console, the metrics, a job's readers and writers) and must not come back
at start-up.
The daemon is asked from outside: a ``sitecustomize`` on its PYTHONPATH (the test's, not
batchd's) writes ``sys.modules`` to a file when the daemon gets SIGUSR2.
"""

from __future__ import annotations

import signal
from pathlib import Path

from batchd import SqlJobRepository
from tests.daemon.support import ROOT, Daemons, control_config, daemons, wait_until

__all__ = ["daemons"]

HOOK = """\
import os, signal, sys


def _write_modules(signum, frame):
    path = os.environ["IDLE_TEST_MODULES"]
    with open(path + ".part", "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
    os.replace(path + ".part", path)


if os.environ.get("IDLE_TEST_MODULES"):
    signal.signal(signal.SIGUSR2, _write_modules)
"""

JOBS = """\
from batchd import JobBuilder, StepBuilder, register

register(JobBuilder("idle").step(StepBuilder("nothing").tasklet(lambda ctx: None).build()).build())
"""

# Packages (and batchd modules) an idle daemon of that config does not need.
NOT_AT_IDLE = (
    "alembic",  # only to create or upgrade the schema; at head, the version table is read
    "mako",
    "pygments",
    "holidays",  # only when a calendar names holidays
    "dateutil",
    "tenacity",  # only to compute a retry's backoff
    "tornado",
    "jinja2",  # only with [web] listen
    "prometheus_client",  # only with [metrics] listen (off in this config)
    "batchd.daemon.metrics",
    "http.server",
    "wsgiref",
    "batchd.web",
    "rich",  # never in the daemon
    "batchd.cli_ctl",  # the client's commands: `batchd ctl` only
    "batchd.ctl",
    "difflib",  # only to name the variable a misspelt BATCHD_ variable looks like
    "dask",
    "distributed",
    "sqlalchemy.orm",  # the repository and recovery are SQLAlchemy Core
    "sqlalchemy.dialects.mysql",  # the dialect of the URL only (SQLite here)
    "sqlalchemy.dialects.postgresql",  # the running index's WHERE is set per dialect opened
    "psycopg",
    "pymysql",
    "batchd.items.csv_items",  # a job's readers and writers, imported by the jobs using them
    "batchd.items.sql_items",
    "batchd.items.file_moves",
)


def test_idle_daemon_does_not_import_what_it_does_not_use(
    tmp_path: Path, daemons: Daemons
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOOK)
    (hooks / "idle_jobs.py").write_text(JOBS)
    url = f"sqlite:///{tmp_path / 'batchd.db'}"
    SqlJobRepository(url).dispose()  # the schema at head, as at any start but the first
    listing = tmp_path / "modules.txt"
    config = control_config(tmp_path, jobs='["idle_jobs"]')
    daemon = daemons.start(
        tmp_path,
        config,
        env={"PYTHONPATH": f"{hooks}:{ROOT}", "IDLE_TEST_MODULES": str(listing)},
    )
    daemon.notify.wait_for("READY=1")
    daemon.signal(signal.SIGUSR2)
    wait_until(listing.exists, what="the daemon's module list")
    loaded = set(listing.read_text().split())
    # The listing is the daemon's: it has started its service and opened the repository.
    assert {"batchd.daemon.service", "sqlalchemy", "idle_jobs"} <= loaded
    found = sorted(
        name
        for name in loaded
        if any(name == bad or name.startswith(bad + ".") for bad in NOT_AT_IDLE)
    )
    assert found == []


def test_head_revision_read_from_the_files_is_alembics() -> None:
    """The start-up's check that the schema is at head reads the migration files itself."""
    from batchd.repository import migrate

    assert migrate.newest_revision_in_files() == migrate.head_revision()
