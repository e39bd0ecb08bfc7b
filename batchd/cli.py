"""The ``batchd`` command.

``batchd ctl`` only sends a line and shows the answer: the repository, the config loader and
the engine (SQLAlchemy, pydantic) are imported by the commands that use them, not here.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from batchd import __version__
from batchd.errors import ConfigError, RepositoryError

if TYPE_CHECKING:
    from batchd.repository import SqlJobRepository


class _Commands(click.Group):
    """The ``batchd`` commands; ``ctl`` (in batchd.cli_ctl) is imported when it is asked
    for: the daemon (``batchd run``) keeps the client's modules out of its memory for life
    (about 0.4 MiB resident)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "ctl"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "ctl":
            from batchd.cli_ctl import ctl

            return ctl
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="batchd")
def main() -> None:
    """batchd: batch jobs with a job repository, schedules and file triggers."""


@main.group()
def db() -> None:
    """The job repository's schema."""


DATABASE_URL = click.option(
    "--database-url",
    envvar="BATCHD_DATABASE_URL",
    required=True,
    help="SQLAlchemy URL of the repository (or BATCHD_DATABASE_URL).",
)


@contextmanager
def _repository(database_url: str) -> Iterator[SqlJobRepository]:
    """The repository for a ``db`` command; a problem ends the command as ``batchd run``
    ends: one line on stderr, 78 for a bad URL, 69 when the database cannot be used."""
    from sqlalchemy.exc import DBAPIError

    from batchd.ctl import EXIT_UNAVAILABLE
    from batchd.daemon.config import EX_CONFIG
    from batchd.repository import SqlJobRepository, parse_database_url

    try:
        parse_database_url(database_url)
    except RepositoryError as error:
        _fail_line(str(error), EX_CONFIG)
    try:
        repository = SqlJobRepository(database_url, upgrade=False)
    except RepositoryError as error:
        _fail_line(str(error), EXIT_UNAVAILABLE)
    try:
        yield repository
    except DBAPIError as error:
        text = str(error.orig).strip() or type(error.orig).__name__
        url = repository.url.render_as_string(hide_password=True)
        _fail_line(f"cannot open database {url}: {text.splitlines()[0]}", EXIT_UNAVAILABLE)
    finally:
        repository.dispose()


def _fail_line(message: str, status: int) -> NoReturn:
    click.echo(f"batchd: {message}", err=True)
    sys.exit(status)


@db.command("upgrade")
@DATABASE_URL
def db_upgrade(database_url: str) -> None:
    """Create or upgrade the repository schema to the newest revision."""
    from batchd.repository import migrate

    with _repository(database_url) as repository:
        with repository.engine.connect() as conn:
            before = migrate.current_revision(conn)
        migrate.upgrade(repository.engine)
        with repository.engine.connect() as conn:
            after = migrate.current_revision(conn)
    if before == after:
        click.echo(f"schema already at revision {after}")
    else:
        click.echo(f"schema upgraded from {before or 'nothing'} to revision {after}")


@db.command("current")
@DATABASE_URL
def db_current(database_url: str) -> None:
    """Print the schema revision of the repository and the newest one batchd knows."""
    from batchd.repository import migrate

    with _repository(database_url) as repository, repository.engine.connect() as conn:
        current = migrate.current_revision(conn)
    click.echo(f"current: {current or 'none'}  newest: {migrate.head_revision()}")


# ---------------------------------------------------------------------------- the daemon's config

CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BATCHD_CONFIG",
    required=True,
    help="The daemon's TOML config file (or BATCHD_CONFIG).",
)


def report_config_error(config_path: Path | None, error: ConfigError) -> None:
    """Print a bad config's problems on stderr, one per line, each naming its key."""
    click.echo(f"batchd: bad config {config_path or '(environment only)'}:", err=True)
    for problem in error.problems:
        click.echo("  " + problem.replace("\n", "\n    "), err=True)


@main.command("check-config")
@CONFIG
def check_config(config_path: Path) -> None:
    """Check a config file (with BATCHD_... overrides applied) and the jobs it imports.

    Exits 0 if it is good, else 78 (EX_CONFIG) with every problem on stderr.
    """
    from batchd.ctl import plural
    from batchd.daemon.config import EX_CONFIG, load_config

    try:
        settings, registry = load_config(config_path)
    except ConfigError as error:
        report_config_error(config_path, error)
        sys.exit(EX_CONFIG)
    click.echo(
        f"config OK: {plural(len(registry.names()), 'job')}, "
        f"{plural(len(settings.schedules), 'schedule')}, "
        f"{plural(len(settings.watches), 'watch', 'watches')}"
    )


@main.command("run")
@CONFIG
@click.option(
    "--log-level",
    default="INFO",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="How much to log on stderr.",
)
def run(config_path: Path, log_level: str) -> None:
    """Run the daemon: schedules, watches, crash recovery; stop with SIGTERM."""
    from batchd.daemon.service import Daemon, configure_logging

    configure_logging(log_level)
    # `kill -USR1 <pid>` writes every thread's stack to stderr (the journal): what a
    # daemon that seems stuck is doing, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    sys.exit(Daemon(config_path).run())


@main.command("web")
@CONFIG
@click.option("--listen", default=None, help='"host:port" to serve on (over [web] listen).')
def web(config_path: Path, listen: str | None) -> None:
    """Serve the read-only web console on the config's repository (as `batchd run` does
    when [web] listen is set), without running any job; stop with SIGTERM."""
    from batchd.daemon.addresses import parse_listen
    from batchd.daemon.config import EX_CONFIG, load_settings
    from batchd.daemon.service import configure_logging
    from batchd.web.run import serve

    configure_logging("INFO")
    try:
        settings = load_settings(config_path)
        if listen is not None:
            parse_listen(listen)
    except ConfigError as error:
        report_config_error(config_path, error)
        sys.exit(EX_CONFIG)
    except ValueError as error:
        click.echo(f"batchd: --listen: {error}", err=True)
        sys.exit(EX_CONFIG)
    sys.exit(serve(settings, listen))


if __name__ == "__main__":
    main()
