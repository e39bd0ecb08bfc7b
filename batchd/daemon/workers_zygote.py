"""The warm process and the worker processes it forks (DESIGN §6).

``python -m batchd.daemon.workers_zygote FD CONFIG`` is started by the daemon
(:mod:`batchd.daemon.workers`). It imports the config's job modules once, then forks one
worker per request that arrives on the SOCK_SEQPACKET socket ``FD``, so a worker costs a
fork, not an interpreter start and the imports. It stays single-threaded, and holds no
database connection, so that a fork copies nothing a child could not use.

Who dies with whom: the warm process asks the kernel for SIGKILL when the daemon's thread
that started it ends (PR_SET_PDEATHSIG), and each worker for SIGKILL when the warm process
ends; the warm process is their parent, so it reaps them and tells the daemon each one's
wait status. Killing the daemon, even with SIGKILL, therefore leaves nothing running.

Messages (JSON, one a datagram): to the warm process ``{"op": "fork"}`` with two file
descriptors, the worker's command socket and the write end of its output pipe; from it
``{"ready": pid}``, ``{"forked": pid}`` and ``{"exited": pid, "status": wait_status}``.
The daemon shutting down its end asks the warm process to fork no more: it leaves once its
last worker has ended (a reload makes a new one without touching running workers).

A worker waits on its command socket for its execution (pickled: the execution as the
daemon created it, its memory limit, the heartbeat interval; the worker types the
parameters with its own job), runs it with
the engine's :class:`~batchd.engine.job_runner.JobRunner` as the execution's owner, and
reads ``stop`` on the same socket meanwhile. Its stdout and stderr (log records included)
are the output pipe, which the daemon copies to the execution's log file.

Then, as Celery's prefork pool does, it may run another: it sends ``done`` and waits for
the next assignment, with its database connection and SQLAlchemy's compiled statements
warm (a fresh worker compiles every repository statement again: most of its start). One
execution at a time, each owned by the worker's pid; an execution with a memory limit is
a worker's last, and so is its :data:`EXECUTIONS_MAX`-th.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import pickle
import queue
import resource
import selectors
import signal
import socket
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Any

from batchd.engine.heartbeat import Heartbeat
from batchd.engine.job_runner import ExecutionHandle, JobRunner
from batchd.engine.listeners import Listeners
from batchd.engine.registry import JobRegistry
from batchd.items.paths import INPUT_DIRECTORIES_VARIABLE
from batchd.model import JobExecution, StepExecution
from batchd.repository import SqlJobRepository

# A worker that ran out of its memory limit exits with this status (the daemon reports
# "memory limit ... exceeded"): sysexits' EX_OSERR is 71, this is batchd's own.
EXIT_MEMORY = 86
# Executions one worker runs before it leaves for a fresh one (what a job leaks stays bounded).
EXECUTIONS_MAX = 100

_PR_SET_PDEATHSIG = 1
_MESSAGE_MAX = 1 << 16
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class Assignment:
    """What a worker is told to run, sent pickled over its command socket."""

    execution: JobExecution
    memory_max: int | None
    heartbeat: float
    # The daemon's input directories as they are now (its watches'; the warm process was
    # started before the watcher declared them, and a reload may change them).
    input_directories: list[str]
    # Exit after this execution instead of taking another (its memory limit stays with it).
    last: bool = False


def die_with_parent(parent: int) -> None:
    """SIGKILL when the parent ends; and if it already has (the fork raced with its end),
    leave now: the kernel would never send the signal."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str]) -> int:
    fd, daemon_pid, config = int(argv[1]), int(argv[2]), argv[3] or None
    die_with_parent(daemon_pid)
    # The daemon's logging: the warm process's own lines go to the daemon's stderr.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    from batchd.daemon.config import load_config

    settings, registry = load_config(config)
    # Created, never connected here: a worker opens its own connections.
    repository = SqlJobRepository(settings.database_url, upgrade=False)
    repository.engine.dispose()
    channel = socket.socket(fileno=fd)
    channel.send(json.dumps({"ready": os.getpid()}).encode())
    return Zygote(channel, repository, registry).serve()


class Zygote:
    """The warm process's loop: fork on request, reap and report the workers."""

    def __init__(
        self, channel: socket.socket, repository: SqlJobRepository, registry: JobRegistry
    ) -> None:
        self.channel = channel
        self.repository = repository
        self.registry = registry
        self.children: set[int] = set()
        self.accepting = True
        # SIGCHLD wakes the loop through this pipe (the handler itself does nothing).
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def serve(self) -> int:
        selector = selectors.DefaultSelector()
        selector.register(self.channel, selectors.EVENT_READ, "channel")
        selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        while self.accepting or self.children:
            for key, _ in selector.select():
                if key.data == "wake":
                    os.read(self.wake_r, 4096)
                    self._reap()
                elif not self._request():
                    self.accepting = False
                    selector.unregister(self.channel)
            self._reap()
        return 0

    def _request(self) -> bool:
        try:
            message, fds, _, _ = socket.recv_fds(self.channel, _MESSAGE_MAX, 2)
        except OSError:
            return False
        if not message:
            return False
        if json.loads(message).get("op") == "fork" and len(fds) == 2:
            self._fork(fds[0], fds[1])
        for fd in fds:
            os.close(fd)
        return True

    def _fork(self, command_fd: int, output_fd: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in (self.wake_r, self.wake_w):
                    os.close(fd)
                self.channel.close()
                status = run_worker(parent, command_fd, output_fd, self.repository, self.registry)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        self.children.add(pid)
        self._send({"forked": pid})

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self._send({"exited": pid, "status": status})

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.channel.send(json.dumps(message).encode())
        except OSError:
            pass  # the daemon is gone: PR_SET_PDEATHSIG ends us in a moment


def run_worker(
    zygote: int,
    command_fd: int,
    output_fd: int,
    repository: SqlJobRepository,
    registry: JobRegistry,
) -> int:
    """A worker's life: run the executions it is given, one at a time, each to its end;
    return the exit status. After each one it tells the daemon ``done`` and waits for the
    next, unless the assignment was its ``last`` (or it ran :data:`EXECUTIONS_MAX`)."""
    die_with_parent(zygote)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for target in (1, 2):
        os.dup2(output_fd, target)
    os.close(output_fd)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # The engine's pool came over with the fork: its connections are the warm process's.
    repository.engine.dispose(close=False)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    command = socket.socket(fileno=command_fd)
    commands = _Commands(command)
    for count in range(1, EXECUTIONS_MAX + 1):
        message = commands.assignments.get()
        if message is None:
            break  # the daemon needs this worker no more
        assignment: Assignment = pickle.loads(message)
        status = _run_assignment(assignment, commands, repository, registry)
        if status is not None:
            return status
        if assignment.last or count == EXECUTIONS_MAX:
            break
        # Its output is in the pipe before the daemon hears it is done.
        sys.stdout.flush()
        sys.stderr.flush()
        command.send(b"done")
    logging.shutdown()
    return 0


def _run_assignment(
    assignment: Assignment,
    commands: _Commands,
    repository: SqlJobRepository,
    registry: JobRegistry,
) -> int | None:
    """Run one execution to its end: None, or the status to exit with at once."""
    execution = assignment.execution
    os.environ[INPUT_DIRECTORIES_VARIABLE] = os.pathsep.join(assignment.input_directories)
    if assignment.memory_max is not None:
        # Counts the heap and every private writable mapping: a job past it gets
        # MemoryError (or, in C code, a failed allocation) instead of the OOM killer.
        resource.setrlimit(resource.RLIMIT_DATA, (assignment.memory_max, assignment.memory_max))
    job = registry.get(execution.job_name)
    if assignment.memory_max is not None:
        job = dataclasses.replace(job, listeners=job.listeners + Listeners([MemoryGuard()]))
    handle = commands.handle = ExecutionHandle(execution.id)
    if commands.stop_asked:  # before its handle was there
        handle.stop_event.set()
    heartbeat = Heartbeat(repository, lambda: [handle], assignment.heartbeat)
    heartbeat.ensure_running()
    try:
        params = job.parameters(execution.params)
        JobRunner(repository, job, execution, params, handle).run()
    except MemoryError:
        return EXIT_MEMORY
    handle.done.set()
    heartbeat.stop()
    return None


class _Commands:
    """Reads the command socket: assignments queued for the worker's main thread (None at
    the end), ``stop`` passed at once to the execution running."""

    def __init__(self, command: socket.socket) -> None:
        self.command = command
        self.assignments: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.handle: ExecutionHandle | None = None
        self.stop_asked = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self.command.recv(_MESSAGE_MAX * 16)
            except OSError:
                message = b""
            if message == b"stop":
                self.stop_asked = True
                if self.handle is not None:
                    self.handle.stop_event.set()
            else:
                self.handle, self.stop_asked = None, False
                self.assignments.put(message or None)
            if not message:
                return  # the daemon is done with us (or gone: PR_SET_PDEATHSIG does the rest)


class MemoryGuard:
    """Ends the worker when a step failed for lack of memory: under the memory limit a
    process that hit it is in no state to go on, and the daemon reports the limit
    (instead of the MemoryError's traceback) as the cause."""

    def after_step(self, step_execution: StepExecution) -> None:
        message = step_execution.exit_message or ""
        if message.startswith("MemoryError") or "\nMemoryError" in message:
            sys.stderr.write(message + "\n")
            os._exit(EXIT_MEMORY)


if __name__ == "__main__":
    # Run as this module's importable self, not as __main__: an assignment pickled by the
    # daemon names batchd.daemon.workers_zygote.Assignment, which every worker would
    # otherwise import afresh (tens of ms on each start).
    from batchd.daemon import workers_zygote

    raise SystemExit(workers_zygote.main(sys.argv))
