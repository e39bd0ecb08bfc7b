"""Named fault points: kill the process between two durable acts, on purpose, in tests.

Each place where batchd does two durable things in a row (a row and a file move, a fire record
and an execution, a claim and a start, a commit and a rename) calls :func:`failpoint` with a name
declared in :data:`WINDOWS`. Nothing happens unless the environment variable
``BATCHD_FAILPOINTS`` named it when the process started, e.g.::

    BATCHD_FAILPOINTS="watcher.after_move=kill"            # SIGKILL this process there
    BATCHD_FAILPOINTS="repo.after_claim=raise,scheduler.after_fire_record=exit(3)"

Actions: ``kill`` (SIGKILL, the crash nobody can catch), ``exit(N)`` (``os._exit``), ``raise``
(:class:`FailpointHit`, for in-process tests), ``sleep(S)`` (widen a race window). The variable
is read once, at import, so a running daemon cannot be made to fail by anyone who cannot already
set its environment; :func:`reload_from_environment` exists for in-process tests only.
"""

from __future__ import annotations

import os
import re
import signal
import time

from batchd.errors import FailpointHit as FailpointHit

ENVIRONMENT_VARIABLE = "BATCHD_FAILPOINTS"

# Every crash window, with what a kill there leaves behind and what repairs it. The README's
# crash-recovery section lists the same windows; tests/test_failpoints.py checks that each one is
# exercised by a test.
WINDOWS: dict[str, str] = {}


def declare(name: str, description: str) -> str:
    """Declare a crash window (at import time of the module that has it); returns ``name``."""
    WINDOWS[name] = description
    return name


_ACTION = re.compile(r"^(kill|raise|exit\((\d+)\)|sleep\(([0-9.]+)\))$")
_active: dict[str, str] = {}


def parse(spec: str) -> dict[str, str]:
    """``"a=kill, b=exit(3)"`` -> ``{"a": "kill", "b": "exit(3)"}``; ValueError when malformed."""
    result: dict[str, str] = {}
    for part in spec.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, action = part.partition("=")
        name, action = name.strip(), action.strip()
        if not sep or not name or not _ACTION.match(action):
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}: {part!r} is not NAME=kill|raise|exit(N)|sleep(S)"
            )
        result[name] = action
    return result


def reload_from_environment() -> None:
    """Read ``BATCHD_FAILPOINTS`` again (in-process tests; a daemon reads it once at start)."""
    _active.clear()
    _active.update(parse(os.environ.get(ENVIRONMENT_VARIABLE, "")))


def failpoint(name: str) -> None:
    """Act as ``BATCHD_FAILPOINTS`` says for ``name``; do nothing when it does not name it."""
    if not _active:  # the production path: one dict truth test
        return
    if name not in WINDOWS:
        raise KeyError(f"undeclared failpoint {name!r}")
    action = _active.get(name)
    if action is None:
        return
    match = _ACTION.match(action)
    assert match is not None
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # SIGKILL is delivered before this returns; never run on
    elif action == "raise":
        raise FailpointHit(f"failpoint {name}")
    elif match.group(2) is not None:
        os._exit(int(match.group(2)))
    else:
        time.sleep(float(match.group(3)))


reload_from_environment()
