"""The daemon's side of the worker processes: the warm process, spare workers, output.

One thread (``batchd-workers``) does all of it: it starts the warm process
(:mod:`batchd.daemon.workers_zygote`) — PR_SET_PDEATHSIG ties the warm process to the thread
that started it, so that thread must live as long as the daemon —, asks it for workers,
reads what it reports (a worker forked, a worker's wait status), and copies every worker's
output to its execution's log file and, line by line tagged with the execution id, to the
daemon's own log.

One worker is kept forked ahead (a spare), so that a start does not wait for a fork: the
operator takes it, records its pid as the new execution's owner, and hands it the execution.
A worker that reports its execution ``done`` is a spare again (up to :data:`IDLE_MAX` of
them), warm: the next start costs neither a fork nor a cold database connection.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import re
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from batchd.daemon.workers_cgroup import MemoryLimits, memory_limits
from batchd.errors import WorkersUnavailable

log = logging.getLogger(__name__)
# The workers' own lines, passed on to the daemon's log.
output_log = logging.getLogger("batchd.worker")

_MESSAGE_MAX = 1 << 16
# The time a worker's log record starts with (workers_zygote.LOG_FORMAT): kept in the
# execution's log file, dropped from the copy in the daemon's log, which stamps its own.
_WORKER_STAMP = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
# How long the start-up or a reload waits for a new warm process to import the jobs.
READY_TIMEOUT = 120.0
# Idle workers kept for the next executions; more leave (each holds a database connection).
IDLE_MAX = 4


@dataclass(eq=False)
class Worker:
    """One worker process as the daemon sees it."""

    command: socket.socket  # the daemon's end: the assignment, then ``stop``
    output: int  # read end of the worker's stdout/stderr
    pid: int = 0
    pidfd: int | None = None
    status: int | None = None  # wait status, once exited; None if it died unreported
    execution_id: int | None = None
    kill_reason: str | None = None
    idle: bool = True  # waiting for an execution (forked, or its last one done)
    exited: threading.Event = field(default_factory=threading.Event)
    output_closed: threading.Event = field(default_factory=threading.Event)
    _log: IO[bytes] | None = None
    _pending: bytearray = field(default_factory=bytearray)
    _partial: bytes = b""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def assign(self, execution_id: int, log_path: Path | None, payload: bytes) -> None:
        """Open the execution's log (what the worker wrote so far goes first) and send it
        its execution; a worker that died meanwhile is seen by its exit."""
        with self._lock:
            self.execution_id, self.idle = execution_id, False
            if log_path is not None:
                try:
                    log_path.parent.mkdir(parents=True, exist_ok=True)
                    self._log = open(log_path, "ab")  # noqa: SIM115 - closed at EOF
                    self._log.write(self._pending)
                    self._log.flush()
                except OSError as error:
                    log.error(
                        "execution %d: cannot write its log %s: %s", execution_id, log_path, error
                    )
            self._pending.clear()
        try:
            self.command.send(payload)
        except OSError as error:
            log.warning(
                "execution %d: worker %d took no execution: %s", execution_id, self.pid, error
            )

    def wait_end(self, timeout: float | None) -> bool:
        """Wait for the end of its execution: the worker says ``done`` (and is idle again)
        or its process ends (then wait for its exit status). False if ``timeout`` seconds
        pass first."""
        watched: list[socket.socket | int] = [self.command]
        if self.pidfd is not None:
            watched.append(self.pidfd)  # readable once the process has ended
        ready, _, _ = select.select(watched, [], [], timeout)
        if not ready:
            return False
        if self.command in ready:
            try:
                message = self.command.recv(64)
            except OSError:
                message = b""
            if message == b"done":
                self.idle = True
                return True
        self.exited.wait()
        return True

    def stop(self) -> None:
        if self.execution_id is not None:
            try:
                self.command.send(b"stop")
            except OSError:
                pass  # it has ended already

    def kill(self, reason: str) -> None:
        """SIGKILL through the pidfd (never a pid the kernel may have reused)."""
        if self.kill_reason is None:
            self.kill_reason = reason
        if self.pidfd is not None and not self.exited.is_set():
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._log is not None:
                self._log.write(data)
                self._log.flush()
            else:
                self._pending += data
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
        for line in lines:
            self._pass_on(line)

    def _pass_on(self, line: bytes) -> None:
        stamp = _WORKER_STAMP.match(line)
        if stamp is not None:
            line = line[stamp.end() :]
        output_log.info("execution %s: %s", self.execution_id, line.decode(errors="replace"))

    def _close_output(self) -> None:
        """The end of its execution's output: the log file closed (later output waits for
        the next execution's)."""
        with self._lock:
            if self._partial:
                self._pass_on(self._partial)
                self._partial = b""
            if self._log is not None:
                self._log.close()
                self._log = None
        self.output_closed.set()

    def reset(self) -> None:
        """Ready for its next execution."""
        self.execution_id, self.kill_reason = None, None
        self.output_closed = threading.Event()

    def release(self) -> None:
        self.command.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


@dataclass(eq=False)
class _Zygote:
    process: subprocess.Popen[bytes]
    channel: socket.socket
    ready: threading.Event = field(default_factory=threading.Event)
    workers: dict[int, Worker] = field(default_factory=dict)
    pending: collections.deque[Worker] = field(default_factory=collections.deque)
    dead: bool = False


class WorkerPool:
    """Workers forked from a warm process that imported the config's job modules."""

    def __init__(self, config_path: Path | None, *, spares: int = 1) -> None:
        self.config_path = config_path
        self.spares_wanted = spares
        self._selector = selectors.DefaultSelector()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._current: _Zygote | None = None
        self._zygotes: list[_Zygote] = []
        self._spares: list[Worker] = []
        self._forking = 0
        self._cond = threading.Condition()
        self._closing = False
        self._starting: _Zygote | None = None
        self.memory = MemoryLimits(None, "not started")
        self._thread = threading.Thread(target=self._loop, name="batchd-workers", daemon=True)

    # ---------------------------------------------------------------- from other threads

    def start(self) -> None:
        """Start the warm process; :meth:`wait_ready` waits for its imports (meanwhile the
        daemon goes on starting up: the two overlap)."""
        # Before the warm process starts: the daemon may move itself to another cgroup.
        self.memory = memory_limits()
        way = "cgroup" if self.memory.cgroup is not None else "rlimit"
        log.info("memory_max by %s: %s", way, self.memory.why)
        self._thread.start()
        made: queue.SimpleQueue[_Zygote | None] = queue.SimpleQueue()
        self._call(lambda: made.put(self._spawn()))
        self._starting = made.get()

    def wait_ready(self) -> None:
        zygote, self._starting = self._starting, None
        if zygote is None or not zygote.ready.wait(READY_TIMEOUT) or zygote.dead:
            raise WorkersUnavailable("the warm worker process did not start (see the log)")

    def threads(self) -> list[threading.Thread]:
        return [self._thread]

    def remake(self) -> None:
        """A new warm process (the job modules imported afresh); the old one forks no more
        and leaves once its running workers have ended. Returns once the new one is ready."""
        made: queue.SimpleQueue[_Zygote | None] = queue.SimpleQueue()
        self._call(lambda: made.put(self._spawn()))
        self._starting = made.get()
        self.wait_ready()

    def take(self) -> Worker:
        """A forked worker waiting for its execution; another is forked to replace it."""
        with self._cond:
            while not self._spares:
                if self._closing:
                    raise WorkersUnavailable("the daemon is stopping")
                if self._forking == 0:
                    self._request_fork()
                self._cond.wait()
            worker = self._spares.pop()  # the last one back: a warm one if there is one
            if len(self._spares) + self._forking < self.spares_wanted:
                self._request_fork()
        return worker

    def give_back(self, worker: Worker) -> None:
        """A worker taken and given no execution (its start was refused), or whose execution
        is done: a spare again if it is idle, from the current warm process (a reload's
        job modules, not older ones), its last output in its log, and wanted; otherwise it is
        let go and exits."""
        with self._cond:
            current = self._current
            if (
                worker.idle
                and (worker.execution_id is None or worker.output_closed.is_set())
                and not worker.exited.is_set()
                and not self._closing
                and current is not None
                and worker.pid in current.workers
                and len(self._spares) < IDLE_MAX
            ):
                worker.reset()
                self._spares.append(worker)
                self._cond.notify_all()
                return
        worker.release()

    def drain(self, worker: Worker) -> None:
        """Once the worker said ``done``: what it wrote before is in its pipe; copy it to
        the execution's log and close that (``output_closed``)."""
        self._call(lambda: self._drain(worker))

    def close(self) -> None:
        """Kill every worker, let the warm processes go, and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._call(self._close_all)
        self._thread.join(timeout=10)
        for zygote in self._zygotes:
            try:
                zygote.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                zygote.process.kill()

    def _request_fork(self) -> None:  # with self._cond held
        self._forking += 1
        self._call(self._fork)

    def _call(self, function: Callable[[], None]) -> None:
        self._calls.put(function)
        os.write(self._wake_w, b"x")

    # ---------------------------------------------------------------- the pool's thread

    def _loop(self) -> None:
        while self._thread_wanted():
            for key, _ in self._selector.select():
                if key.data is None:
                    os.read(self._wake_r, 4096)
                    while not self._calls.empty():
                        self._calls.get()()
                elif isinstance(key.data, Worker):
                    self._read_output(key.data)
                else:
                    self._read_zygote(key.data)

    def _thread_wanted(self) -> bool:
        return not (self._closing and not self._zygotes and not self._selector_has_outputs())

    def _selector_has_outputs(self) -> bool:
        return any(isinstance(key.data, Worker) for key in self._selector.get_map().values())

    def _spawn(self) -> _Zygote | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = str(self.config_path) if self.config_path is not None else ""
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "batchd.daemon.workers_zygote",
                    str(theirs.fileno()),
                    str(os.getpid()),
                    config,
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                # Out of the terminal's process group: a Ctrl-C reaches the daemon only,
                # which stops the workers' executions the way it means to.
                start_new_session=True,
            )
        except OSError:
            log.exception("cannot start the warm worker process")
            ours.close()
            return None
        finally:
            theirs.close()
        zygote = _Zygote(process, ours)
        self._zygotes.append(zygote)
        self._selector.register(ours, selectors.EVENT_READ, zygote)
        return zygote

    def _fork(self) -> None:
        zygote = self._current
        if zygote is None or self._closing:
            with self._cond:
                self._forking -= 1
                self._cond.notify_all()
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        output_r, output_w = os.pipe()
        worker = Worker(ours, output_r)
        try:
            socket.send_fds(zygote.channel, [b'{"op": "fork"}'], [theirs.fileno(), output_w])
        except OSError:
            log.exception("cannot ask the warm worker process for a worker")
            ours.close()
            os.close(output_r)
            with self._cond:
                self._forking -= 1
                self._cond.notify_all()
            return
        finally:
            theirs.close()
            os.close(output_w)
        zygote.pending.append(worker)
        self._selector.register(output_r, selectors.EVENT_READ, worker)

    def _read_zygote(self, zygote: _Zygote) -> None:
        try:
            message = zygote.channel.recv(_MESSAGE_MAX)
        except OSError:
            message = b""
        if not message:
            self._zygote_ended(zygote)
            return
        report = json.loads(message)
        if "ready" in report:
            previous, self._current = self._current, zygote
            zygote.ready.set()
            if previous is not None:
                self._retire(previous)
            with self._cond:
                wanted = self.spares_wanted - len(self._spares) - self._forking
                for _ in range(max(0, wanted)):
                    self._request_fork()
        elif "forked" in report:
            worker = zygote.pending.popleft()
            worker.pid = report["forked"]
            try:
                worker.pidfd = os.pidfd_open(worker.pid)
            except OSError:
                worker.pidfd = None  # already gone: its exit report follows
            zygote.workers[worker.pid] = worker
            with self._cond:
                self._forking -= 1
                if zygote is self._current and not self._closing:
                    self._spares.append(worker)
                else:
                    worker.release()  # nobody will need it: it reads the end and exits
                self._cond.notify_all()
        elif "exited" in report:
            exited = zygote.workers.pop(report["exited"], None)
            if exited is not None:
                exited.status = report["status"]
                self._ended(exited)

    def _ended(self, worker: Worker) -> None:
        with self._cond:
            if worker in self._spares:
                self._spares.remove(worker)
                worker.release()
        worker.exited.set()

    def _retire(self, zygote: _Zygote) -> None:
        """Fork no more from ``zygote``; its spares go, its running workers stay."""
        with self._cond:
            spares = [w for w in self._spares if w.pid in zygote.workers]
            for worker in spares:
                self._spares.remove(worker)
                # Our end closed (not only shut down: a reload must not leak it), the
                # spare reads the end and exits.
                worker.release()
        try:
            zygote.channel.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _zygote_ended(self, zygote: _Zygote) -> None:
        self._selector.unregister(zygote.channel)
        zygote.channel.close()
        zygote.dead = True
        zygote.ready.set()
        zygote.process.wait()
        self._zygotes.remove(zygote)
        lost = list(zygote.workers.values()) + list(zygote.pending)
        zygote.workers.clear()
        zygote.pending.clear()
        with self._cond:
            self._forking -= len([w for w in lost if not w.pid])
            self._cond.notify_all()
        for worker in lost:
            self._ended(worker)  # status None: it ended with its warm process
        if zygote is self._current:
            self._current = None
            if not self._closing:
                log.error(
                    "the warm worker process ended (%s); starting another",
                    zygote.process.returncode,
                )
                self._spawn()

    def _drain(self, worker: Worker) -> None:
        while worker.output in self._readable_outputs(worker):
            data = os.read(worker.output, _MESSAGE_MAX)
            if not data:
                break  # its end: _read_output closes it
            worker._write(data)
        worker._close_output()

    def _readable_outputs(self, worker: Worker) -> list[int]:
        if worker.output_closed.is_set():
            return []
        try:
            return select.select([worker.output], [], [], 0)[0]
        except (OSError, ValueError):
            return []  # closed at its end meanwhile

    def _read_output(self, worker: Worker) -> None:
        try:
            data = os.read(worker.output, _MESSAGE_MAX)
        except OSError:
            data = b""
        if data:
            worker._write(data)
            return
        self._selector.unregister(worker.output)
        os.close(worker.output)
        worker._close_output()

    def _close_all(self) -> None:
        for zygote in list(self._zygotes):
            for worker in zygote.workers.values():
                worker.kill("the daemon stopped")
            zygote.process.kill()
        with self._cond:
            for worker in self._spares:
                worker.release()
            self._spares.clear()
