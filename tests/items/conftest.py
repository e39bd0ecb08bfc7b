"""What every item test shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchd.items.sql_items import dispose_engines


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    dispose_engines()  # Engines cached per URL must not outlive the test's database
