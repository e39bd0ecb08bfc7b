"""The owner's heartbeat: proves it is alive, and brings in stops made elsewhere."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from batchd.engine.job_runner import ExecutionHandle
from batchd.model import BatchStatus
from batchd.repository import SqlJobRepository

log = logging.getLogger(__name__)


class Heartbeat:
    """Every ``interval`` seconds, one background thread records a heartbeat for every
    execution this process runs, and raises the stop flag of those another process asked
    to stop (or recovered: their owner must give up)."""

    def __init__(
        self,
        repository: SqlJobRepository,
        handles: Callable[[], list[ExecutionHandle]],
        interval: float,
    ) -> None:
        self.repository = repository
        self.handles = handles
        self.interval = interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopped.clear()
                self._thread = threading.Thread(
                    target=self._loop, name="batchd-heartbeat", daemon=True
                )
                self._thread.start()

    def beat(self) -> None:
        """One heartbeat now (also used by tests and on demand)."""
        handles = {handle.execution_id: handle for handle in self.handles()}
        if not handles:
            return
        statuses = self.repository.heartbeat(list(handles))
        for execution_id, handle in handles.items():
            status = statuses.get(execution_id)
            if status == BatchStatus.STOPPING:
                handle.stop_event.set()
            elif (status is None or not status.is_running) and not (
                handle.done.is_set() or handle.lost
            ):
                log.warning(
                    "job execution %d was ended elsewhere (%s); giving it up", execution_id, status
                )
                handle.lost = True
                handle.stop_event.set()

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.beat()
            except Exception:
                # The database may be away for a while: keep beating, recovery uses a lease.
                log.exception("heartbeat failed")

    def stop(self) -> None:
        self._stopped.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=self.interval + 1)
