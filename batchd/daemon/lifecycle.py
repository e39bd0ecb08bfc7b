"""The daemon's components, the order they start in, and whether their threads still run.

A component is started by :meth:`Lifecycle.start`, which registers its ``stop()`` on an
:class:`~contextlib.ExitStack` as soon as it has started: leaving the stack (a stop signal, a
start-up that failed half-way, a dead thread) stops exactly what had started, newest first.

A component's ``threads()`` are the background threads it needs while it runs (the watcher's
observer and worker, the control socket's accept thread, ...). None of them ends on its own,
so one that has ended is a bug or a crash: :meth:`Lifecycle.dead` names it, and the daemon
then stops sending ``WATCHDOG=1`` instead of vouching for a daemon that no longer takes files
or answers its socket.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from batchd.daemon.durations import format_duration
from batchd.daemon.workers import ProcessOperator
from batchd.engine import JobOperator

log = logging.getLogger(__name__)

# How long the shutdown waits for killed workers' executions to be recorded FAILED.
KILLED_WORKERS_SECONDS = 10.0


class Component(Protocol):
    """One part of the daemon with a start, a stop and the threads it runs meanwhile."""

    @property
    def name(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def threads(self) -> list[threading.Thread]: ...


def no_threads() -> list[threading.Thread]:
    return []


def nothing() -> None:
    pass


@dataclass(frozen=True)
class Part:
    """A :class:`Component` made of an object's own start and stop methods."""

    name: str
    start: Callable[[], None]
    stop: Callable[[], None] = nothing
    threads: Callable[[], list[threading.Thread]] = no_threads


class Lifecycle:
    """The components started so far, each stopped when ``stack`` closes."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._started: list[Component] = []

    def start(self, component: Component) -> None:
        component.start()
        self._stack.callback(self._stop, component)
        self._started.append(component)

    @staticmethod
    def _stop(component: Component) -> None:
        # The components stopped after this one (older ones) must still stop.
        try:
            component.stop()
        except Exception:
            log.exception("stopping the %s failed", component.name)

    def dead(self) -> list[str]:
        """``"component (thread)"`` for each thread of a started component that has ended."""
        return [
            f"{component.name} ({thread.name})"
            for component in self._started
            for thread in component.threads()
            if not thread.is_alive()
        ]


@contextmanager
def restored_signal_handlers(signums: Iterable[int]) -> Iterator[None]:
    """Put back, on leaving, the handlers ``signums`` had on entering (whatever the daemon
    installed meanwhile: its flag-setting handlers, then those of a shutdown)."""
    saved = {signum: signal.getsignal(signum) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def stop_executions(operator: JobOperator, grace: timedelta, *, exit_status: int) -> None:
    """The operator's stop, once no trigger can start anything: every running execution is
    asked to stop and given ``grace``. Job threads cannot be interrupted, so if some still
    run then, the process leaves at once with ``exit_status`` (the shutdown's: a dead
    component must still make systemd restart batchd) and crash recovery takes them over."""
    handles = operator.active_handles()
    log.info("no more triggers; asking %d running executions to stop", len(handles))
    for handle in handles:
        operator.stop(handle.execution_id)
    deadline = time.monotonic() + grace.total_seconds()
    for handle in handles:
        handle.done.wait(max(0.0, deadline - time.monotonic()))
    still_running = [handle.execution_id for handle in operator.active_handles()]
    if still_running and isinstance(operator, ProcessOperator):
        # Workers can be killed: their executions end FAILED now, not at recovery.
        operator.kill_workers(f"the daemon stopped, stop_grace {format_duration(grace)} passed")
        for handle in handles:
            handle.done.wait(KILLED_WORKERS_SECONDS)
        still_running = [handle.execution_id for handle in operator.active_handles()]
    if still_running:
        log.warning(
            "stop_grace passed; executions %s still run and are left to crash recovery",
            still_running,
        )
        logging.shutdown()
        os._exit(exit_status)
    operator.shutdown(wait=True)


__all__ = [
    "Component",
    "Lifecycle",
    "Part",
    "no_threads",
    "nothing",
    "restored_signal_handlers",
    "stop_executions",
]
