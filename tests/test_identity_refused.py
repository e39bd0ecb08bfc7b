"""A database that will not say which server it is: its writers join a chunk transaction
only through the repository's own Engine, and the log says why."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import create_engine, text

from batchd.model import database_identity


def test_a_postgresql_role_that_may_not_ask_is_only_the_same_as_its_own_engine(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = pg_url.rsplit("/", 1)[1]
    role = f"unprivileged_{name}"
    admin = create_engine(pg_url)
    # In this test's own database only (function privileges are per database).
    with admin.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC"))
    first = create_engine(pg_url.replace("postgres@", f"{role}@"))
    second = create_engine(pg_url.replace("postgres@", f"{role}@"))
    try:
        with caplog.at_level(logging.WARNING, logger="batchd.model.transaction"):
            identity = database_identity(first)
            assert database_identity(first) == identity  # asked once, kept
            assert database_identity(second) != identity  # cannot prove they are one
        assert identity.startswith("postgresql:unproven-")
        assert "does not tell its system identifier (" in caplog.text
        assert "permission denied" in caplog.text
    finally:
        first.dispose()
        second.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()
