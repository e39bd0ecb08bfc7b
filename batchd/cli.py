"""The ``batchd`` command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchd import __version__
from batchd.daemon.config import EX_CONFIG, ConfigError, load_config
from batchd.errors import BatchError
from batchd.repository import SqlJobRepository, migrate


@click.group()
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


@db.command("upgrade")
@DATABASE_URL
def db_upgrade(database_url: str) -> None:
    """Create or upgrade the repository schema to the newest revision."""
    repository = _open(database_url, upgrade=False)
    try:
        with repository.engine.connect() as conn:
            before = migrate.current_revision(conn)
        migrate.upgrade(repository.engine)
        with repository.engine.connect() as conn:
            after = migrate.current_revision(conn)
    finally:
        repository.dispose()
    if before == after:
        click.echo(f"schema already at revision {after}")
    else:
        click.echo(f"schema upgraded from {before or 'nothing'} to revision {after}")


@db.command("current")
@DATABASE_URL
def db_current(database_url: str) -> None:
    """Print the schema revision of the repository and the newest one batchd knows."""
    repository = _open(database_url, upgrade=False)
    try:
        with repository.engine.connect() as conn:
            current = migrate.current_revision(conn)
    finally:
        repository.dispose()
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
    try:
        settings, registry = load_config(config_path)
    except ConfigError as error:
        report_config_error(config_path, error)
        sys.exit(EX_CONFIG)
    click.echo(
        f"config OK: {len(registry.names())} jobs, {len(settings.schedules)} schedules, "
        f"{len(settings.watches)} watches"
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
    sys.exit(Daemon(config_path).run())


# ---------------------------------------------------------------------------- helpers


def _open(database_url: str, *, upgrade: bool) -> SqlJobRepository:
    try:
        return SqlJobRepository(database_url, upgrade=upgrade)
    except BatchError as error:
        click.echo(f"batchd: {error}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
