"""Duck-typed listeners: an object registers every hook it has (the hooks are those of the
Protocols in :mod:`batchd.interfaces`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from batchd.interfaces import CHUNK_HOOKS as CHUNK_HOOKS
from batchd.interfaces import JOB_HOOKS as JOB_HOOKS
from batchd.interfaces import STEP_HOOKS as STEP_HOOKS

log = logging.getLogger(__name__)


class Listeners:
    """The listeners of a job or step, called hook by hook in registration order.

    Each object may be a :class:`~batchd.interfaces.JobListener`,
    :class:`~batchd.interfaces.StepListener`, :class:`~batchd.interfaces.ChunkListener`,
    :class:`~batchd.interfaces.SkipListener` or :class:`~batchd.interfaces.PartitionListener`,
    several of them, or any object with some of their hooks.
    """

    def __init__(self, objects: Iterable[object] | None = None) -> None:
        self.objects: list[object] = list(objects or [])

    def __add__(self, other: Listeners) -> Listeners:
        return Listeners(self.objects + other.objects)

    def __bool__(self) -> bool:
        return bool(self.objects)

    def has(self, hook: str) -> bool:
        return any(callable(getattr(obj, hook, None)) for obj in self.objects)

    def has_any(self, hooks: tuple[str, ...]) -> bool:
        return any(self.has(hook) for hook in hooks)

    def call(self, hook: str, *args: object) -> None:
        """Call ``hook`` on every listener that has it. Exceptions propagate: a failing
        listener fails the step or job it belongs to."""
        for obj in self.objects:
            method = getattr(obj, hook, None)
            if callable(method):
                method(*args)


def notify(observer: object, hook: str, *args: object) -> None:
    """Call ``observer.<hook>(*args)`` if the observer has that hook, and log, not raise, what
    it raises: an observer (metrics, a backfill) must not break what it watches."""
    method = getattr(observer, hook, None)
    if not callable(method):
        return
    try:
        method(*args)
    except Exception:
        log.exception("%r failed in %s", observer, hook)
