"""``memory_max`` through a delegated cgroup v2, or the rlimit (DESIGN §6).

The choice is checked on directory trees laid out as cgroupfs and /proc/self lay them out
(what the daemon reads and writes there is files); a real daemon then enforces a limit
through a real delegated cgroup where this machine has one, and is skipped with what is
missing where it has not (the rlimit's path is tested everywhere: test_workers.py)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchd.daemon.workers_cgroup import memory_limits, oom_killed, own_cgroup
from tests.daemon.support import Launch
from tests.daemon.test_workers import worker_config

UNIT = "system.slice/batchd.service"


def _tree(
    tmp: Path, *, cgroup2: bool = True, controllers: str = "cpu io memory pids", procs: str = ""
) -> Path:
    """A /proc/self and a cgroupfs in ``tmp``, this process in the unit's cgroup; its /proc."""
    proc, root = tmp / "proc", tmp / "cgroup"
    proc.mkdir()
    mounts = "proc /proc proc rw 0 0\n"
    if cgroup2:
        mounts += f"cgroup2 {root} cgroup2 rw,nosuid 0 0\n"
    (proc / "mounts").write_text(mounts)
    (proc / "cgroup").write_text(f"0::/{UNIT}\n" if cgroup2 else "4:memory:/x\n1:cpu:/\n")
    unit = root / UNIT
    unit.mkdir(parents=True)
    (unit / "cgroup.controllers").write_text(controllers + "\n")
    (unit / "cgroup.procs").write_text(procs or f"{os.getpid()}\n")
    (unit / "cgroup.subtree_control").write_text("")
    return proc


def test_a_delegated_cgroup_holds_the_daemon_in_a_leaf_and_each_worker_in_its_own(
    tmp_path: Path,
) -> None:
    proc = _tree(tmp_path)
    chosen = memory_limits(proc)
    unit = tmp_path / "cgroup" / UNIT
    assert chosen.cgroup == unit
    assert (unit / "daemon" / "cgroup.procs").read_text() == str(os.getpid())
    assert (unit / "cgroup.subtree_control").read_text() == "+memory"
    child = chosen.place(4242, 200 * 2**20)
    assert child == unit / "worker-4242"
    assert (child / "memory.max").read_text() == str(200 * 2**20)
    assert (child / "cgroup.procs").read_text() == "4242"
    assert not oom_killed(child)  # no memory.events yet
    (child / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\n")
    assert not oom_killed(child)
    (child / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
    assert oom_killed(child)


def test_the_cgroups_of_a_killed_daemon_s_ended_workers_are_removed_at_start(
    tmp_path: Path,
) -> None:
    proc = _tree(tmp_path)
    unit = tmp_path / "cgroup" / UNIT
    (unit / "worker-4242").mkdir()  # its worker ended with the killed daemon
    (unit / "worker-4343").mkdir()  # a process still in it (cgroupfs refuses to remove it)
    (unit / "worker-4343" / "cgroup.procs").write_text("4343\n")
    assert memory_limits(proc).cgroup == unit
    assert not (unit / "worker-4242").exists()
    assert (unit / "worker-4343" / "cgroup.procs").read_text() == "4343\n"


@pytest.mark.parametrize(
    ("layout", "why"),
    [
        ({"cgroup2": False}, "no cgroup v2 hierarchy is mounted"),
        ({"controllers": "cpu io pids"}, "the memory controller is not available in "),
        ({"procs": "1\n77\n"}, "holds other processes than the daemon"),
    ],
)
def test_without_a_delegated_cgroup_with_memory_the_rlimit_applies(
    tmp_path: Path, layout: dict[str, object], why: str
) -> None:
    chosen = memory_limits(_tree(tmp_path, **layout))  # type: ignore[arg-type]
    assert chosen.cgroup is None and why in chosen.why
    assert chosen.place(4242, 2**30) is None
    assert not (tmp_path / "cgroup" / UNIT / "daemon").exists()  # nothing moved


@pytest.fixture
def delegated_cgroup() -> Iterator[Path]:
    """A new child of this process's cgroup v2, with the memory controller, for a daemon
    of its own; skips, naming what is missing, where there is none."""
    here, why = own_cgroup()
    if here is None:
        pytest.skip(why)
    if not os.access(here / "cgroup.procs", os.W_OK):
        pytest.skip(f"{here} cannot be written (no delegated cgroup)")
    child = here / f"batchd-test-{uuid.uuid4().hex[:8]}"
    try:
        child.mkdir()
    except OSError as error:
        pytest.skip(f"cannot create a cgroup below {here}: {error}")
    try:
        if "memory" not in (child / "cgroup.controllers").read_text().split():
            pytest.skip(f"{here} does not give its children the memory controller")
        yield child
    finally:
        for cgroup in [*child.glob("*/"), child]:
            try:
                cgroup.rmdir()
            except OSError:
                pass  # a process of the killed daemon not reaped yet


def test_a_worker_past_its_memory_max_in_a_delegated_cgroup_is_killed_by_the_kernel(
    delegated_cgroup: Path, launch: Launch, tmp_path: Path
) -> None:
    # The daemon starts alone in the delegated cgroup, as systemd starts it in its unit's
    # with Delegate=yes: a site module moves it there before batchd runs (and not the
    # processes it starts: the variable is gone by then).
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\n"
        "procs = os.environ.pop('TEST_CGROUP_PROCS', None)\n"
        "if procs:\n"
        "    open(procs, 'w').write('0')\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {
        "PYTHONPATH": f"{site}{os.pathsep}{root}",
        "TEST_CGROUP_PROCS": str(delegated_cgroup / "cgroup.procs"),
    }
    launched = launch(worker_config(tmp_path), env=env)
    assert f"memory_max by cgroup: workers in child cgroups of {delegated_cgroup}" in (
        launched.daemon.output()
    )
    control = launched.connect()
    healthy = control.call("start", job="healthy", params={"run": 1, "seconds": 2})["id"]
    bad = control.call("start", job="eats_memory", params={"run": 1})["id"]
    failed = control.wait_for_status(bad, "FAILED", "COMPLETED")
    assert re.fullmatch(r"memory limit 200M exceeded", failed["exit_message"]), failed
    assert control.wait_for_status(healthy, "COMPLETED", "FAILED")["status"] == "COMPLETED"
    assert not list(delegated_cgroup.glob("worker-*"))  # each removed after its worker

