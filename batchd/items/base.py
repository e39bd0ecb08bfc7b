"""Base classes shared by the built-in readers and writers.

They implement the Protocols of :mod:`batchd.interfaces` (a user's reader or writer need not
inherit from them: any object with the right methods works)."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel

from batchd import interfaces
from batchd.model import ExecutionContext


class ItemStream(interfaces.ItemStream):
    """An object the engine opens, checkpoints and closes around a step.

    - ``open(ctx)`` is called before the first item; it must reset every per-run attribute
      from ``ctx`` (the engine gives each execution its own ``copy.copy`` of the object);
    - ``update(ctx)`` is called just before each chunk commits: save the position in ``ctx``;
    - ``close()`` is always called at the end, after a failure too.

    Every key kept in the ExecutionContext starts with :attr:`name` (the class name unless
    ``name=`` was given), so that a reader and a writer never collide.
    """

    # Attributes that hold one run's resources (open files, connections, buffers). A copy
    # (``copy.copy``) or a pickle of the object leaves them out: each copy opens its own.
    _runtime: tuple[str, ...] = ()

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).__name__

    def _fresh_state(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for attr in self._runtime:
            if attr in state:
                state[attr] = None
        return state

    def __copy__(self) -> Self:
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self._fresh_state())
        return clone

    def __getstate__(self) -> dict[str, Any]:
        return self._fresh_state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def key(self, suffix: str) -> str:
        """The ExecutionContext key ``"<name>.<suffix>"``."""
        return f"{self.name}.{suffix}"

    def open(self, ctx: ExecutionContext) -> None:
        """Prepare for reading or writing from the checkpoint in ``ctx``."""

    def update(self, ctx: ExecutionContext) -> None:
        """Save the position in ``ctx``; called just before each chunk commits."""

    def close(self) -> None:
        """Release resources; always called, after a failure too."""


class ItemReader(ItemStream, interfaces.Reader[Any], ABC):
    """A restartable reader: ``read()`` returns the next item, or None at the end."""

    @abstractmethod
    def read(self) -> Any:
        """The next item, or None when there are no more."""


class ItemWriter(ItemStream, interfaces.Writer[Any], interfaces.Completable, ABC):
    """A restartable writer: ``write(items)`` writes one chunk (or part of one)."""

    @abstractmethod
    def write(self, items: list[Any]) -> None:
        """Write ``items``."""

    def complete(self, ctx: ExecutionContext) -> None:
        """Called once after the step's last chunk has committed, before the step is recorded
        COMPLETED (never after a failure or a stop): publish the output here."""


def params_dict(params: Any) -> dict[str, Any]:
    """Job parameters as a dict of typed values: a dict as it is, a pydantic model's fields
    (``dict(model)``, so a ``date`` field stays a ``date``), a dataclass's fields."""
    if params is None:
        return {}
    if isinstance(params, BaseModel):
        return dict(params)
    if isinstance(params, Mapping):
        return dict(params)
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    if hasattr(params, "__dict__"):
        return dict(vars(params))
    raise TypeError(f"job parameters of type {type(params).__name__} are not a mapping")
