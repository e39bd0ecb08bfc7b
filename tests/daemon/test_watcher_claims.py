"""A dropped file's claim (``TriggerStore.claim_file``): what it records, once, and what it
costs on the way from the file to its job, on every repository database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from batchd import SqlJobRepository
from batchd.repository import TriggerStore

DIGEST = "ab" * 32


def test_a_claim_is_the_row_as_stored_and_is_made_once(repository: SqlJobRepository) -> None:
    store = TriggerStore(repository)
    dest = "/in/processed/a.csv"
    params = {"file": dest, "n": 1}
    claim = store.claim_file("inbox", "a.csv", DIGEST, destination=dest, params=params)
    assert claim is not None
    assert claim == store.claim_of_file("inbox", "a.csv", DIGEST)
    assert (claim.state, claim.node, claim.params) == ("claimed", store.node, params)
    assert claim.destination == dest
    assert claim.execution_floor == 0  # no execution yet
    assert store.claim_file("inbox", "a.csv", DIGEST) is None  # the same name and content
    # What the claim holds is what its taker finishes it with (compare-and-set on it).
    assert store.finish_file(claim, "started", None, None)


def test_claiming_a_file_is_one_statement_where_the_database_returns_the_row(
    repository: SqlJobRepository,
) -> None:
    """The claim is read from its INSERT (RETURNING), not read again after the commit:
    one transaction, one statement, between the file's arrival and its job's creation."""
    store = TriggerStore(repository)
    store.claim_file("inbox", "warm.csv", DIGEST)  # compiled before counting
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()[:2]).upper())

    event.listen(repository.engine, "before_cursor_execute", record)
    try:
        assert store.claim_file("inbox", "b.csv", DIGEST) is not None
    finally:
        event.remove(repository.engine, "before_cursor_execute", record)
    statements = [s for s in seen if not s.startswith(("BEGIN", "COMMIT", "ROLLBACK", "SET"))]
    expected = 1 if repository.engine.dialect.insert_returning else 2
    assert len(statements) == expected, seen
    assert statements[0] == "INSERT INTO"
