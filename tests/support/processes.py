"""Processes that are gone, for owners recovery must find dead."""

from __future__ import annotations

import socket
import subprocess
import sys

from batchd.repository import Owner


def dead_pid() -> int:
    """The pid of a process of this host that has exited and been reaped."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


def dead_owner() -> Owner:
    """An owner on this host whose process is gone."""
    return Owner(socket.gethostname(), dead_pid())
