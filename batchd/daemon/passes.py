"""A pass that the daemon repeats on a thread of its own, and that can be woken early.

The retry pass (:mod:`batchd.daemon.retries`) and the watch over waiting fires and deadlines
(:mod:`batchd.daemon.dependencies`) both run this way: every so often, and at once when an
execution ends that may be what they wait for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

log = logging.getLogger(__name__)


@dataclass(eq=False)
class PassThread:
    """Runs ``run()`` on a daemon thread named ``name`` from :meth:`start` to :meth:`stop`:
    again when the seconds it returns have passed (None: ``every`` seconds), or as soon as
    :meth:`wake` is called. A pass that raises is logged at ``level`` with its traceback
    (``what`` names it) and the next one comes ``every`` seconds later. With
    ``first_at_once=False`` the thread waits before its first pass (for an owner that has
    just run one itself)."""

    name: str
    run: Callable[[], float | None]
    _: KW_ONLY
    every: float
    what: str
    level: int = logging.ERROR
    first_at_once: bool = True
    thread: threading.Thread | None = field(default=None, init=False)
    _wake: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def start(self) -> None:
        self._stopping.clear()
        self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self.thread.start()

    def wake(self) -> None:
        """Run the next pass now (or right after the one under way)."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """No further pass; waits for the one under way (at most ``timeout`` seconds)."""
        self._stopping.set()
        self._wake.set()
        thread, self.thread = self.thread, None
        if thread is not None:
            thread.join(timeout)

    def threads(self) -> list[threading.Thread]:
        """The thread, while started."""
        return [self.thread] if self.thread is not None else []

    def _loop(self) -> None:
        wait = 0.0 if self.first_at_once else self.every
        while True:
            self._wake.wait(wait)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                after = self.run()
            except Exception:
                log.log(
                    self.level,
                    "%s failed; trying again in %gs",
                    self.what,
                    self.every,
                    exc_info=True,
                )
                after = None
            wait = self.every if after is None else after


__all__ = ["PassThread"]
