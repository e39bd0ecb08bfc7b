"""The ``batchd`` command."""

from __future__ import annotations

import sys

import click

from batchd import __version__
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


def _open(database_url: str, *, upgrade: bool) -> SqlJobRepository:
    try:
        return SqlJobRepository(database_url, upgrade=upgrade)
    except BatchError as error:
        click.echo(f"batchd: {error}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
