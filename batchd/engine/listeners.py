"""Duck-typed listeners: an object registers every hook it has."""

from __future__ import annotations

from typing import Any

JOB_HOOKS = ("before_job", "after_job")
# The hooks called from inside the chunk loop (in a partition's worker, too).
CHUNK_HOOKS = (
    "before_chunk",
    "after_chunk",
    "on_chunk_error",
    "on_skip_in_read",
    "on_skip_in_process",
    "on_skip_in_write",
)
STEP_HOOKS = (
    "before_step",
    "after_step",
    "before_partition",
    "after_partition",
    "on_partition_error",
    *CHUNK_HOOKS,
)


class Listeners:
    """The listeners of a job or step, called hook by hook in registration order."""

    def __init__(self, objects: list[Any] | None = None) -> None:
        self.objects: list[Any] = list(objects or [])

    def __add__(self, other: Listeners) -> Listeners:
        return Listeners(self.objects + other.objects)

    def __bool__(self) -> bool:
        return bool(self.objects)

    def has(self, hook: str) -> bool:
        return any(callable(getattr(obj, hook, None)) for obj in self.objects)

    def has_any(self, hooks: tuple[str, ...]) -> bool:
        return any(self.has(hook) for hook in hooks)

    def call(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every listener that has it. Exceptions propagate: a failing
        listener fails the step or job it belongs to."""
        for obj in self.objects:
            method = getattr(obj, hook, None)
            if callable(method):
                method(*args)
