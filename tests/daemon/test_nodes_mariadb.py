"""Several daemons (nodes) on one MariaDB repository, as on PostgreSQL: the tests of
tests/daemon/test_nodes.py, whose ``pg_url`` is here a MariaDB database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon.test_daemon import DaemonProcess
from tests.daemon.test_nodes import start_node
from tests.daemon.test_nodes import (
    test_files_dropped_on_a_shared_directory_are_taken_once as files_taken_once,
)
from tests.daemon.test_nodes import (
    test_three_nodes_run_every_fire_once_though_one_is_killed as three_nodes,
)

pytestmark = pytest.mark.mariadb

__all__ = ["start_node"]  # the fixture the nodes start with


@pytest.fixture
def pg_url(mariadb_url: str) -> str:
    """The repository of the nodes (the fixture test_nodes.py's tests and start_node ask
    for), on MariaDB."""
    return mariadb_url


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_three_nodes_on_mariadb_run_every_fire_once_though_one_is_killed(
    start_node: Callable[..., DaemonProcess], pg_url: str
) -> None:
    three_nodes(start_node, pg_url)


@pytest.mark.timeout(120)
def test_files_dropped_for_nodes_on_mariadb_are_taken_once(
    start_node: Callable[..., DaemonProcess], pg_url: str, tmp_path: Path
) -> None:
    files_taken_once(start_node, pg_url, tmp_path)
