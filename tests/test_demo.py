"""`make demo` on a fresh clone: it installs only what the demo runs, ends with three commands
to try next, and those commands work as printed."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_install import copy_checkout


def venv_has(venv: Path, module: str) -> bool:
    probe = subprocess.run([venv / "bin" / "python", "-c", f"import {module}"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(900)  # a fresh virtualenv: pip installs batchd's dependencies
def test_make_demo_on_a_fresh_clone(tmp_path: Path) -> None:
    clone = copy_checkout(tmp_path / "batchd")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("BATCHD_", "VIRTUAL_ENV", "MAKE", "MFLAGS"))}
    env["PYTHON"] = sys.executable  # the interpreter this suite runs, for the new virtualenv
    demo = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]

    venv = clone / ".venv"
    assert venv_has(venv, "batchd")
    for tool in ("ruff", "mypy", "pytest", "distributed"):
        assert not venv_has(venv, tool), f"make demo installed {tool}"

    tail = demo.stdout[demo.stdout.index("== try next:"):].splitlines()[1:]
    commands = [words for line in tail if (words := shlex.split(line, comments=True))]
    assert len(commands) == 3, tail
    run, ctl, tour = commands
    assert run[1:3] == ["run", "--config"] and ctl[-1] == "executions"

    daemon = subprocess.Popen(run, cwd=clone, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        listed = subprocess.CompletedProcess(ctl, 69)
        while listed.returncode != 0 and daemon.poll() is None:
            listed = subprocess.run(ctl, cwd=clone, env=env, capture_output=True, text=True)
        assert listed.returncode == 0, daemon.stderr.read() if daemon.stderr else ""
        assert listed.stdout.count("COMPLETED") == 2, listed.stdout  # the demo's two runs
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0

    toured = subprocess.run(tour, cwd=clone, env=env, capture_output=True, text=True)
    assert toured.returncode == 0, toured.stdout[-3000:] + toured.stderr[-3000:]
