"""``memory_max`` through a delegated cgroup v2 (DESIGN §6), or else the rlimit.

Where the daemon runs in a cgroup v2 of its own that it may write (systemd's
``Delegate=yes``) and that has the memory controller, each worker gets a child cgroup of
that one with ``memory.max``: the kernel counts all the worker's memory (page cache and
children included) and OOM-kills it past the limit; its ``memory.events`` then says so.
Everywhere else a worker sets ``RLIMIT_DATA`` on itself (:mod:`batchd.daemon.workers_zygote`).

cgroup v2 lets a cgroup enable controllers for its children only while it holds no process
itself, so the daemon first moves itself (and so the warm process it starts next) into a
``daemon`` child; workers are its siblings: ``<cgroup>/daemon``, ``<cgroup>/worker-<pid>``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROC_SELF = Path("/proc/self")


@dataclass(frozen=True)
class MemoryLimits:
    """How a worker's ``memory_max`` is enforced: below ``cgroup``, or (None) by the rlimit,
    ``why`` saying why that way."""

    cgroup: Path | None
    why: str

    def place(self, pid: int, memory_max: int) -> Path | None:
        """Put a worker in a child cgroup limited to ``memory_max`` bytes; the child, or
        None (the worker then limits itself with the rlimit) if it cannot be made."""
        if self.cgroup is None:
            return None
        child = self.cgroup / f"worker-{pid}"
        try:
            child.mkdir(exist_ok=True)
            (child / "memory.max").write_text(str(memory_max))
            # Swap would only slow a worker past its limit down; the whole group goes at
            # once (a partition process with its worker).
            for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                if (child / name).exists():
                    (child / name).write_text(value)
            (child / "cgroup.procs").write_text(str(pid))
        except OSError as error:
            log.warning("worker %d: no cgroup of its own (%s): the rlimit applies", pid, error)
            remove(child)
            return None
        return child


def own_cgroup(proc: Path = PROC_SELF) -> tuple[Path | None, str]:
    """This process's cgroup v2 directory if it has the memory controller (read from
    ``proc``/mounts and ``proc``/cgroup), or None and why not."""
    mounts = [line.split() for line in (proc / "mounts").read_text().splitlines()]
    mount = next((Path(f[1]) for f in mounts if len(f) > 2 and f[2] == "cgroup2"), None)
    lines = (proc / "cgroup").read_text().splitlines()
    relative = next((line[3:] for line in lines if line.startswith("0::")), None)
    if mount is None or relative is None:
        return None, "no cgroup v2 hierarchy is mounted (cgroup v1 only)"
    here = mount / relative.lstrip("/")
    try:
        controllers = (here / "cgroup.controllers").read_text().split()
    except OSError:
        return None, f"this process's cgroup {here} is not under {mount}"
    if "memory" not in controllers:
        return None, f"the memory controller is not available in {here} (has: {controllers})"
    return here, ""


def memory_limits(proc: Path = PROC_SELF) -> MemoryLimits:
    """Choose how ``memory_max`` is enforced, and set the cgroup up if it is the way: this
    process's cgroup v2 (:func:`own_cgroup`) if it holds no other process and can be
    written; this process then moves into its ``daemon`` child and memory is enabled for
    the children."""
    here, why = own_cgroup(proc)
    if here is None:
        return MemoryLimits(None, why)
    pid = str(os.getpid())
    if set((here / "cgroup.procs").read_text().split()) - {pid}:
        return MemoryLimits(None, f"{here} holds other processes than the daemon (not delegated)")
    try:
        (here / "daemon").mkdir(exist_ok=True)
        (here / "daemon" / "cgroup.procs").write_text(pid)
        (here / "cgroup.subtree_control").write_text("+memory")
    except OSError as error:
        return MemoryLimits(None, f"{here} cannot be written (no Delegate=yes?): {error}")
    for stale in here.glob("worker-*"):
        # Left by a daemon killed before it could remove them; the kernel refuses to remove
        # one that still holds a process, so a live worker's cgroup stays.
        remove(stale)
    return MemoryLimits(here, f"workers in child cgroups of {here}")


def oom_killed(child: Path) -> bool:
    """Whether the kernel killed a process of the cgroup for its memory limit."""
    try:
        events = (child / "memory.events").read_text()
    except OSError:
        return False
    counts = dict(line.split() for line in events.splitlines() if line.strip())
    return int(counts.get("oom_kill", "0")) > 0


def remove(child: Path) -> None:
    """Remove a worker's cgroup once its processes have ended."""
    try:
        child.rmdir()
    except OSError as error:
        log.debug("cgroup %s not removed: %s", child, error)
