"""The failpoint facility, and that every declared crash window has a test that kills there."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import batchd
from batchd import failpoints

TESTS = Path(__file__).resolve().parent


PACKAGE = Path(batchd.__file__).resolve().parent


def _import_all() -> None:
    # By file, not pkgutil.walk_packages: batchd.daemon is a namespace package, which
    # walk_packages does not enter.
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if "migrations" not in parts:
            importlib.import_module(".".join(p for p in parts if p != "__init__"))


def test_every_crash_window_is_killed_in_some_test() -> None:
    _import_all()
    assert failpoints.WINDOWS, "no crash window declared"
    texts = "\n".join(
        path.read_text() for path in TESTS.rglob("test_*.py") if path.name != "test_failpoints.py"
    )
    untested = sorted(name for name in failpoints.WINDOWS if f'"{name}' not in texts)
    assert untested == []


def test_a_malformed_spec_is_refused_with_its_part_named() -> None:
    with pytest.raises(ValueError, match="'a=explode'"):
        failpoints.parse("a=explode")
    assert failpoints.parse("a=kill; b=exit(3), c=sleep(0.5)") == {
        "a": "kill",
        "b": "exit(3)",
        "c": "sleep(0.5)",
    }


def test_raise_acts_only_on_the_named_point(monkeypatch: pytest.MonkeyPatch) -> None:
    first = failpoints.declare("test.first", "a window of this test")
    second = failpoints.declare("test.second", "another window of this test")
    monkeypatch.setenv(failpoints.ENVIRONMENT_VARIABLE, f"{first}=raise")
    failpoints.reload_from_environment()
    try:
        failpoints.failpoint(second)
        with pytest.raises(failpoints.FailpointHit, match=r"test\.first"):
            failpoints.failpoint(first)
    finally:
        monkeypatch.delenv(failpoints.ENVIRONMENT_VARIABLE)
        failpoints.reload_from_environment()
        del failpoints.WINDOWS[first], failpoints.WINDOWS[second]
    failpoints.failpoint(first)  # inactive again


def test_the_readme_lists_every_crash_window() -> None:
    _import_all()
    readme = (TESTS.parent / "README.md").read_text()
    section = readme.split("#### Every crash window", 1)[1].split("\n## ", 1)[0]
    missing = sorted(name for name in failpoints.WINDOWS if f"| `{name}` |" not in section)
    assert missing == []
