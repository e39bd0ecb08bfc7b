"""The layering of DESIGN §1: dependencies point one way only."""

from __future__ import annotations

import ast
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
