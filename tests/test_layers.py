"""The layering of DESIGN §1: dependencies point one way only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batchd"

# What each layer may not import (the daemon observes the engine through listeners).
FORBIDDEN = {
    "model": ("batchd.repository", "batchd.engine", "batchd.items", "batchd.daemon"),
    "repository": ("batchd.engine", "batchd.items", "batchd.daemon"),
    "engine": ("batchd.daemon", "batchd.items", "apscheduler", "watchdog", "prometheus_client"),
    "items": ("batchd.engine", "batchd.repository", "batchd.daemon"),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer: str) -> None:
    offending = {
        f"{path.relative_to(PACKAGE.parent)}: {name}"
        for path in (PACKAGE / layer).rglob("*.py")
        for name in imported_modules(path)
        if name.startswith(FORBIDDEN[layer])
    }
    assert offending == set()


# What `batchd ctl` may not import to send a request and print a one-line answer: the
# engine, the repository, their libraries and rich (the tables' renderer) cost more than
# the rest of the client's start.
CTL_NEVER_IMPORTS = (
    "alembic",
    "apscheduler",
    "asyncio",
    "batchd.ctl_render",
    "batchd.engine",
    "batchd.items",
    "batchd.repository",
    "prometheus_client",
    "pydantic",
    "rich",
    "sqlalchemy",
    "watchdog",
)


def test_ctl_ping_imports_only_what_it_sends_and_prints(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from batchd.cli import main\n"
        "from batchd.ctl import show\n"
        "try:\n"
        f"    main(['ctl', '--socket', {str(tmp_path / 'none.sock')!r}, 'ping'])\n"
        "except SystemExit as end:\n"
        "    assert end.code == 69, end.code  # no daemon there\n"
        "show('ping', {'version': '1', 'node': 'n', 'pid': 7, 'uptime_seconds': 61,\n"
        "              'database': 'sqlite:///b.db'})\n"
        "print('--modules--', *sorted(sys.modules), sep='\\n', file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout == "batchd 1 node n pid 7, up 1m01s, database sqlite:///b.db\n"
    imported = done.stderr.split("--modules--\n", 1)[1].split()
    assert [
        name
        for name in imported
        if any(name == heavy or name.startswith(heavy + ".") for heavy in CTL_NEVER_IMPORTS)
    ] == []
