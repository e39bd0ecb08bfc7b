"""Every error class of batchd is in ``batchd.errors``, subclasses BatchError, and can still be
imported from the module that raises it."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import batchd.errors
from batchd.errors import BatchError

# Where each error was defined before batchd.errors held them all: these paths stay valid.
OLD_PATHS = {
    "SkipLimitExceeded": ["batchd.engine", "batchd.engine.faults"],
    "PartitionError": ["batchd.engine.partition_step"],
    "PartitionFailed": ["batchd.engine.partition_step"],
    "NodeConflict": ["batchd.repository.nodes"],
    "FailpointHit": ["batchd.failpoints"],
    "ConfigError": ["batchd.daemon.config"],
    "TemplateError": ["batchd.daemon.templates"],
    "NoSuchSchedule": ["batchd.daemon.scheduler"],
    "NoSuchCalendar": ["batchd.daemon.calendars"],
    "NoSuchBackfill": ["batchd.daemon.backfill"],
    "ProtocolError": ["batchd.daemon.protocol"],
    "ControlError": ["batchd.ctl"],
}


def error_classes() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(batchd.errors).items()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }


def test_every_error_is_a_batch_error() -> None:
    classes = error_classes()
    assert set(OLD_PATHS) <= set(classes)
    assert [name for name, cls in classes.items() if not issubclass(cls, BatchError)] == []


@pytest.mark.parametrize("name", sorted(OLD_PATHS))
def test_old_import_paths_give_the_same_class(name: str) -> None:
    for module in OLD_PATHS[name]:
        assert getattr(importlib.import_module(module), name) is getattr(batchd.errors, name)


# Exceptions that never leave the code that raises them (control flow turned into an outcome,
# an exit status or an HTTP status), not errors a caller sees.
INTERNAL = {
    "batchd.daemon.watch_files.Rejected",
    "batchd.daemon.service.StartupFailed",
    "batchd.web.pages.NotFound",
    "batchd.web.server.BadRequest",
}


def test_no_error_class_is_defined_outside_batchd_errors() -> None:
    package = Path(batchd.errors.__file__).parent
    names = [
        "batchd." + ".".join(path.relative_to(package).with_suffix("").parts)
        for path in package.rglob("*.py")
        if "migrations" not in path.parts
    ]
    defined = {
        f"{module.__name__}.{name}"
        for module in map(importlib.import_module, (n.removesuffix(".__init__") for n in names))
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__ != "batchd.errors"
        and not name.startswith("_")
    }
    assert defined - INTERNAL == set()


def test_errors_module_imports_nothing_from_batchd() -> None:
    # Every layer imports batchd.errors, so it must sit below all of them.
    tree = ast.parse(Path(batchd.errors.__file__).read_text())
    nodes = list(ast.walk(tree))
    imported = {alias.name for n in nodes if isinstance(n, ast.Import) for alias in n.names}
    imported |= {n.module or "" for n in nodes if isinstance(n, ast.ImportFrom)}
    assert [name for name in imported if name.startswith("batchd")] == []


def test_template_error_stays_a_value_error() -> None:
    assert issubclass(batchd.errors.TemplateError, ValueError)
    assert issubclass(batchd.errors.NoSuchSchedule, LookupError)
