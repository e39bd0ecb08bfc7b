"""MySQL and MariaDB as the repository's database: what they need that the others do not.

The server is checked when the repository opens (:func:`check_server`): a version that has
what batchd relies on (``SKIP LOCKED``, generated columns under a unique index, no-pad binary
collations), a utf8mb4 database, and the privileges the migrations need when they are due.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, text

from batchd.errors import RepositoryError

MINIMUM_MARIADB: tuple[int, ...] = (10, 11)
MINIMUM_MYSQL = (8, 0, 17)  # utf8mb4_0900_bin

# Named lock (GET_LOCK) that serialises upgrades, like PostgreSQL's advisory lock.
MIGRATION_LOCK = "batchd.migrate"
# Named lock that serialises node registrations (PostgreSQL locks the table).
NODE_LOCK = "batchd.node"
LOCK_TIMEOUT_SECONDS = 60

# Every statement of a running repository; and what the migrations add to them.
RUNTIME_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
MIGRATION_PRIVILEGES = ("CREATE", "ALTER", "INDEX", "REFERENCES")

DUPLICATE_KEY = 1062


def is_duplicate_of(error: BaseException | None, index_name: str) -> bool:
    """Whether a MySQL error is a duplicate key of ``index_name`` (MySQL 8 names it
    ``table.index``, MariaDB ``index``)."""
    args: tuple[Any, ...] = getattr(error, "args", ())
    if len(args) < 2 or args[0] != DUPLICATE_KEY:
        return False
    return re.search(rf"for key '(?:[^']*\.)?{re.escape(index_name)}'", str(args[1])) is not None


def check_server(conn: Connection, *, upgrading: bool) -> None:
    """Refuse, with what to do about it, a server older than supported, a database whose
    character set is not utf8mb4, or a user without the privileges batchd needs (with
    ``upgrading``, those of the migrations too)."""
    dialect: Any = conn.dialect
    where = conn.engine.url.render_as_string(hide_password=True)
    version = tuple(dialect.server_version_info or ())
    if dialect.is_mariadb:
        name, minimum = "MariaDB", MINIMUM_MARIADB
    else:
        name, minimum = "MySQL", MINIMUM_MYSQL
    if version < minimum:
        raise RepositoryError(
            f"{where}: {name} {'.'.join(map(str, version))} is older than batchd supports "
            f"({name} {'.'.join(map(str, minimum))} or newer)"
        )
    database, charset = conn.execute(
        text("SELECT DATABASE(), @@character_set_database")
    ).one()
    if database is None:
        raise RepositoryError(f"{where}: the URL names no database (mysql+pymysql://user@host/db)")
    if charset != "utf8mb4":
        raise RepositoryError(
            f"{where}: database {database!r} uses the character set {charset}, which cannot "
            f"hold every character; batchd needs utf8mb4: ALTER DATABASE `{database}` "
            "CHARACTER SET utf8mb4 (or create the database with it)"
        )
    needed = RUNTIME_PRIVILEGES + (MIGRATION_PRIVILEGES if upgrading else ())
    missing = [p for p in needed if p not in _privileges(conn)]
    if missing:
        raise RepositoryError(
            f"{where}: user {_current_user(conn)} lacks the privileges {', '.join(missing)} on "
            f"database {database!r}"
            + (" that the schema's migrations need" if upgrading else "")
            + f": GRANT {', '.join(needed)} ON `{database}`.* TO the user"
        )


def _current_user(conn: Connection) -> str:
    user, host = str(conn.execute(text("SELECT CURRENT_USER()")).scalar_one()).rsplit("@", 1)
    return f"'{user}'@'{host}'"


def _privileges(conn: Connection) -> set[str]:
    """The privileges the current user holds on the current database: global ones, and those
    of the database patterns that match it (grants through roles are not seen)."""
    rows = conn.execute(
        text(
            "SELECT privilege_type FROM information_schema.user_privileges"
            " WHERE grantee = :grantee"
            " UNION SELECT privilege_type FROM information_schema.schema_privileges"
            " WHERE grantee = :grantee AND DATABASE() LIKE table_schema"
        ),
        {"grantee": _current_user(conn)},
    ).scalars()
    return {str(row).upper() for row in rows}

