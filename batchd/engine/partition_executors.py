"""Where the partitions of a step run: threads, worker processes, or any Executor (a Dask
``distributed.Client`` included)."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import signal
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from batchd.engine.main_guard import check_main_guard

EXECUTOR_NAMES = ("threads", "processes")

# prctl(PR_SET_PDEATHSIG): the kernel kills a worker process when the job's process dies.
_PR_SET_PDEATHSIG = 1


def check_executor_spec(spec: Any) -> None:
    """ValueError unless ``spec`` is ``"threads"``, ``"processes"``, an Executor or a Dask
    ``distributed.Client``."""
    if spec in EXECUTOR_NAMES or isinstance(spec, Executor) or _is_dask_client(spec):
        return
    raise ValueError(
        f"executor must be 'threads', 'processes', a concurrent.futures.Executor or a "
        f"distributed.Client, not {spec!r}"
    )


@dataclass
class PartitionExecutor:
    """An executor opened for one partitioned step execution.

    ``in_process``: partitions run as threads of this process and share its repository
    and stop flag; otherwise each task is pickled, and the worker opens the repository
    from its URL and watches the database for a stop. ``owned`` executors are shut down
    when the step ends; an executor the user passed in is left running.
    """

    executor: Executor
    description: str
    in_process: bool
    owned: bool
    dumps: Any = pickle.dumps

    def close(self) -> None:
        """Called once every partition has ended and its end is recorded: the step need
        not wait while idle worker processes exit."""
        if self.owned:
            self.executor.shutdown(wait=self.in_process, cancel_futures=True)


def open_executor(spec: Any, tasks: int, workers: int | None, step_name: str) -> PartitionExecutor:
    """The executor ``spec`` names, sized for ``tasks`` partitions (``workers`` at most)."""
    if spec == "threads":
        return PartitionExecutor(
            # At most the standard library's default (CPUs + 4): more threads than that
            # mostly wait for the GIL or, on SQLite, for the single writer lock.
            ThreadPoolExecutor(
                max_workers=workers or min(tasks, (os.cpu_count() or 1) + 4),
                thread_name_prefix=f"batchd-{step_name}",
            ),
            "threads",
            in_process=True,
            owned=True,
        )
    if spec == "processes":
        check_main_guard(step_name)  # a clear error instead of a BrokenProcessPool
        # Spawned, never forked: the job's process has threads (the daemon's scheduler,
        # watcher, heartbeat) whose locks a fork would copy in whatever state they are in.
        return PartitionExecutor(
            ProcessPoolExecutor(
                max_workers=workers or min(tasks, os.cpu_count() or 1),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker_process,
                initargs=(os.getpid(),),
            ),
            "processes",
            in_process=False,
            owned=True,
        )
    if _is_dask_client(spec):
        import cloudpickle  # a dependency of distributed: what Dask pickles tasks with

        # pure=False: every submission runs, even of an equal-looking task.
        return PartitionExecutor(
            spec.get_executor(pure=False),
            f"Dask {spec!r}",
            in_process=False,
            owned=False,
            dumps=cloudpickle.dumps,
        )
    if isinstance(spec, ThreadPoolExecutor):
        return PartitionExecutor(spec, repr(spec), in_process=True, owned=False)
    if isinstance(spec, Executor):
        dumps = pickle.dumps
        if type(spec).__module__.startswith("distributed"):
            import cloudpickle

            dumps = cloudpickle.dumps
        return PartitionExecutor(spec, repr(spec), in_process=False, owned=False, dumps=dumps)
    check_executor_spec(spec)
    raise AssertionError("unreachable")


def _is_dask_client(spec: Any) -> bool:
    return type(spec).__module__.startswith("distributed") and callable(
        getattr(spec, "get_executor", None)
    )


def _init_worker_process(parent_pid: int) -> None:
    """Runs first in every worker process."""
    # The job's process decides how its partitions end: a SIGTERM or Ctrl-C sent to the
    # whole process group must reach the partitions as a stop (through the database), not
    # kill them mid-chunk, which would count them FAILED instead of STOPPED.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A worker must not outlive the job's process: a partition still writing files after
    # its job was recovered and restarted elsewhere would corrupt the restart's output.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the stop check still ends the partition
        pass
    if os.getppid() != parent_pid:
        os._exit(1)
