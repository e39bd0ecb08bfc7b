"""MySQL's INSERT with PostgreSQL's and SQLite's ON CONFLICT methods (imported only by a
process that uses MySQL or MariaDB)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.mysql import Insert


class MySQLInsert(Insert):
    """MySQL's INSERT with the ON CONFLICT methods the repository calls on PostgreSQL's and
    SQLite's. MySQL has no conflict target: ON DUPLICATE KEY UPDATE applies to any unique key,
    so it is used only on tables whose one unique key besides an auto-increment id is the
    ``index_elements`` given."""

    inherit_cache = True

    @property
    def excluded(self) -> Any:
        return self.inserted

    def on_conflict_do_nothing(self, index_elements: list[str]) -> MySQLInsert:
        # A no-op update: the row is left as it was (INSERT IGNORE would also turn errors
        # other than the duplicate into warnings).
        key = index_elements[0]
        return self.on_duplicate_key_update({key: self.table.c[key]})

    def on_conflict_do_update(
        self, index_elements: list[str], set_: dict[str, Any]
    ) -> MySQLInsert:
        return self.on_duplicate_key_update(set_)
