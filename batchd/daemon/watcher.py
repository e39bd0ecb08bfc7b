"""Watches: a job started for each file dropped into a directory.

A watch (:class:`~batchd.daemon.settings.WatchSettings`) names a directory, a job, a file
name filter and parameter templates. :class:`Watcher` observes every watched directory
(non-recursively) and takes each file that matches once its writer is done with it.

**When a file is taken** (decided by :class:`~batchd.daemon.watch_events.FileEvents`, which
observes the directories)

- Linux (inotify): at once when its writer closes it after writing (close-write), or when it
  is renamed or moved into the directory (a rename is atomic: the file is complete). A file
  that is open, or that was written to since it was last closed, is never taken early, however
  long its writer pauses: the close-write decides. Files that appear without being written
  (hard links, symlinks, special files) are taken once stable, as below. (Needs watchdog >= 5
  for its open/close-nowrite events.)
- Elsewhere (or with ``close_events=False``), and for files found by :meth:`Watcher.scan`:
  once its size and mtime have not changed for the watch's ``stable_for``, checked by a small
  background thread (never in the observer thread). A scanned file whose mtime is already
  older than ``stable_for`` is taken by the scan itself. (A writer that holds a file open
  without writing for longer than ``stable_for`` defeats this fallback — so does, at
  start-up, a writer that opened its file before the daemon started and pauses that long;
  writers should write to a hidden name and rename, which is always safe.)

**What is ignored** (left alone, not logged): directories, hidden names (leading ``.``),
``*.reason`` files, the ``processed/`` and ``rejected/`` subdirectories (the watch is
non-recursive) and names that do not match ``pattern`` (an ``fnmatchcase`` glob, default
``*``) or ``regex`` (``re.fullmatch``; the settings allow one of the two). When two
watches share a directory, the first in the configuration whose filter matches takes it.

**What is refused** (moved to ``rejected/``, outcome ``refused``): symlinks (the link itself
is moved; its target is never read), paths that resolve outside the directory and anything
that is not a regular file (a FIFO would block the reader).

**Taking a file** (:mod:`batchd.daemon.file_taker`): read it once, render and validate its
parameters (a file they do not suit is rejected before it is claimed), claim it in the
repository, move it to ``processed/``, start the job. A file that cannot start a job moves
to ``rejected/`` with ``<name>.reason`` beside it.

If the repository cannot be reached (the claim fails), the file is left where it is and tried
again after :data:`RETRY_AFTER` seconds. Nothing raises out of the observer thread or the
worker thread; each file gets one log line (watch, name, outcome, execution id or reason),
and ``listener.on_watch_file(watch, outcome)`` is called when the listener has that method.
Outcomes: :data:`OUTCOMES`.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta, tzinfo
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from batchd import failpoints
from batchd.daemon.file_taker import OUTCOMES, FileTaker, TakenFile
from batchd.daemon.settings import WatchSettings
from batchd.daemon.watch_events import FileEvents
from batchd.daemon.watch_files import MAX_JSON_TRIGGER, PROCESSED, REJECTED
from batchd.daemon.watch_rules import (
    REASON_SUFFIX,
    WATCH_VARIABLES,
    WatchState,
    validate_watch,
    watch_variables,
)
from batchd.engine.listeners import notify
from batchd.engine.operator import JobOperator
from batchd.items.paths import allow_input_directory
from batchd.repository.triggers import TriggerStore

__all__ = [
    "MAX_JSON_TRIGGER",
    "OUTCOMES",
    "PROCESSED",
    "REASON_SUFFIX",
    "REJECTED",
    "WATCH_VARIABLES",
    "TakenFile",
    "Watcher",
    "validate_watch",
    "watch_variables",
]

log = logging.getLogger(__name__)

#: Seconds before a file whose claim failed (repository unreachable) is tried again.
RETRY_AFTER: Final = 30.0
#: How long another node's claim may stay unfinished before it is taken over, unless the
#: daemon gives its lease.
DEFAULT_LEASE: Final = timedelta(seconds=60)


COMPONENT_THREAD_DIES = failpoints.declare(
    "daemon.component_thread_dies",
    "the watcher's worker thread dies (action raise) before taking a ready file; the daemon "
    "sees the dead thread, stops sending WATCHDOG=1 and exits 70 for systemd to restart it, "
    "and the restarted daemon's first scan takes the file",
)


# ---------------------------------------------------------------------------- the watcher


class Watcher:
    """Starts a job for each file dropped into a watched directory (see the module docs).

    ``start()`` observes the directories and takes the files already there; ``stop()``
    stops observing (running jobs are not touched); ``reconfigure(watches)`` adds, changes
    and removes watches (SIGHUP); ``scan(name=None)`` looks at every file now and returns
    what it took; ``describe()`` reports each watch.

    ``timezone`` is that of ``mtime``/``mtime_date`` (the daemon's); ``close_events=False``
    forces the size-stable fallback even where close-write events exist (None: use them
    when available). ``listener`` may have ``on_watch_file(watch, outcome)``. Another
    node's unfinished claim is taken over once older than ``lease`` and when
    ``may_take_over()`` says old heartbeats mean dead nodes (the daemon's membership).
    """

    def __init__(
        self,
        watches: list[WatchSettings],
        operator: JobOperator,
        store: TriggerStore,
        *,
        listener: object | None = None,
        timezone: str | tzinfo = "UTC",
        close_events: bool | None = None,
        lease: timedelta = DEFAULT_LEASE,
        may_take_over: Callable[[], bool] = lambda: True,
    ) -> None:
        self._listener = listener
        self._taker = FileTaker(
            operator,
            store,
            timezone=ZoneInfo(timezone) if isinstance(timezone, str) else timezone,
            lease=lease,
            may_take_over=may_take_over,
        )
        # What the directories' events say: which files are ready to take.
        self._files = FileEvents(close_events)
        # Lock order: _take_lock, then _lock, then the FileEvents' own. _lock guards the
        # watches, their counts and the worker; _take_lock makes taking files one at a time,
        # so that a file seen by an event and by a scan is taken once (the second finds it
        # gone).
        self._take_lock = threading.RLock()
        self._lock = threading.RLock()
        self._states: dict[str, WatchState] = self._build_states(watches, {})
        self._files.watch(self._states)
        self._worker: threading.Thread | None = None

    @property
    def close_events(self) -> bool:
        """Whether close-write events are used; known after :meth:`start`."""
        return self._files.close_events

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Finish the claims a previous run left unfinished, observe every watched
        directory, then take the files already there."""
        self.finish_claims()
        with self._lock:
            if self._worker is not None:
                raise RuntimeError("the watcher is already started")
            self._files.start()
            self._worker = threading.Thread(target=self._run, name="batchd-watcher", daemon=True)
            self._worker.start()
        log.info(
            "watcher started: %s (%s)",
            ", ".join(self._states) or "no watches",
            "close-write" if self.close_events else "size-stable",
        )
        self.scan()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop observing and taking files (a file being taken is finished first).
        Files not taken yet are found by the next start's scan."""
        with self._lock:
            worker, self._worker = self._worker, None
        observed = self._files.stop(timeout)
        if worker is not None:
            worker.join(timeout)
        if observed:
            log.info("watcher stopped")

    def threads(self) -> list[threading.Thread]:
        """The observer and the worker thread, while started."""
        with self._lock:
            return [thread for thread in (self._files.thread, self._worker) if thread is not None]

    def reconfigure(self, watches: list[WatchSettings]) -> None:
        """Replace the watches: new ones are observed and scanned, removed ones forgotten,
        changed ones updated (and scanned). Running jobs are not touched. Raises ValueError
        (and changes nothing) if a watch is invalid."""
        with self._take_lock, self._lock:
            old = self._states
            new = self._build_states(watches, old)
            added = [name for name in new if name not in old]
            removed = [name for name in old if name not in new]
            changed = [
                name for name in new if name in old and new[name].settings != old[name].settings
            ]
            self._states = new
            self._files.watch(new)
            started = self._worker is not None
        log.info(
            "watches reconfigured: added %s, removed %s, changed %s",
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
            ", ".join(changed) or "none",
        )
        if started:
            for name in added + changed:
                self.scan(name)

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------------- scanning

    def scan(self, name: str | None = None) -> list[TakenFile]:
        """Look at every file of every watch (or of watch ``name``) now, oldest first.
        Files whose mtime is older than ``stable_for`` (and symlinks, which are refused)
        are taken before this returns; younger ones wait in the background for stability.
        Returns the files taken. KeyError if there is no watch ``name``."""
        with self._lock:
            if name is not None and name not in self._states:
                raise KeyError(f"no watch named {name!r}")
            states = [s for s in self._states.values() if name is None or s.name == name]
        taken: list[TakenFile] = []
        for state in states:
            for path, info in self._listing(state):
                age = time.time() - info.st_mtime
                if stat.S_ISLNK(info.st_mode) or age >= state.settings.stable_for.total_seconds():
                    result = self._take_path(path)
                    if result is not None:
                        taken.append(result)
                else:
                    self._files.wait_for_stable(path)
        return taken

    def _listing(self, state: WatchState) -> list[tuple[Path, os.stat_result]]:
        """The files of a watch's directory that it wants, oldest first."""
        try:
            entries = list(os.scandir(state.root))
        except OSError as error:
            log.error("watch %s: cannot list %s: %s", state.name, state.root, error)
            return []
        files = []
        for entry in entries:
            if state.groups(entry.name) is None:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            if not stat.S_ISDIR(info.st_mode):
                files.append((Path(entry.path), info))
        files.sort(key=lambda item: (item[1].st_mtime_ns, item[0].name))
        return files

    # ----------------------------------------------------------------- describing

    def describe(self) -> list[dict[str, Any]]:
        """One dict per watch: its settings, files waiting and files taken by outcome."""
        with self._lock:
            return [
                {
                    "name": state.name,
                    "job": state.settings.job,
                    "directory": str(state.root),
                    "pattern": state.settings.pattern or "*",
                    "regex": state.settings.regex,
                    "stable_for": state.settings.stable_for.total_seconds(),
                    "pending": self._files.pending(state),
                    "files": dict(state.counts),
                    "observed": self._files.observes(state.root),
                    "close_events": self.close_events,
                }
                for state in self._states.values()
            ]

    # ----------------------------------------------------- configuration helpers

    @staticmethod
    def _build_states(
        watches: Iterable[WatchSettings], old: dict[str, WatchState]
    ) -> dict[str, WatchState]:
        states: dict[str, WatchState] = {}
        for watch in watches:
            if watch.name in states:
                raise ValueError(f"two watches are named {watch.name!r}")
            validate_watch(watch)
            previous = old.get(watch.name)
            states[watch.name] = WatchState.of(watch, previous.counts if previous else None)
            # Readers may follow a parameter ({file} = "{path}") to the files of a watch.
            allow_input_directory(states[watch.name].root)
        return states

    # ------------------------------------------------------------ the worker thread

    def _run(self) -> None:
        """Take the files that are ready, and those that have become stable."""
        while (paths := self._files.next_files()) is not None:
            for path in paths:
                if self._files.stopping:
                    return
                failpoints.failpoint(COMPONENT_THREAD_DIES)
                self._take_path(path)

    # ----------------------------------------------------------------- taking a file

    def _take_path(self, path: Path) -> TakenFile | None:
        """Take one file if a watch still wants it and it is still there. Never raises."""
        with self._take_lock:
            state = self._files.owner(path)
            if state is None:
                return None
            try:
                result = self._taker.take(state, path)
            except Exception as error:  # e.g. the repository is unreachable
                log.exception(
                    "watch %s: %s: error, retrying in %gs", state.name, path.name, RETRY_AFTER
                )
                self._files.look_again(path, RETRY_AFTER)
                result = TakenFile(state.name, path.name, "error", reason=str(error))
            if result is not None and result.outcome == "elsewhere":
                # In case that node dies before moving it (finish_claims also sees to it).
                self._files.look_again(path, self._taker.lease.total_seconds())
        if result is not None:
            self._report(state, result)
        return result

    def finish_claims(self) -> list[TakenFile]:
        """Finish the claims left unfinished by a taker that died (this node's at once,
        other nodes' after the lease): each file ends where it belongs and its job is
        started once. Called by :meth:`start` and by the daemon's recovery pass. Never
        raises (a claim that cannot be finished now is tried again at the next call)."""
        with self._take_lock:
            with self._lock:
                states = dict(self._states)
            try:
                results = self._taker.finish_claims(states)
            except Exception:
                log.exception("watcher: cannot finish the unfinished claims; trying again later")
                return []
        for result in results:
            self._report(states[result.watch], result)
        return results

    def _report(self, state: WatchState, result: TakenFile) -> None:
        """The file's log line, counter and listener call."""
        with self._lock:
            state.counts[result.outcome] = state.counts.get(result.outcome, 0) + 1
        if result.outcome == "started":
            log.info(
                "watch %s: %s started job %s (execution %d)",
                result.watch,
                result.name,
                state.settings.job,
                result.execution_id,
            )
        else:
            log.warning(
                "watch %s: %s %s: %s", result.watch, result.name, result.outcome, result.reason
            )
        notify(self._listener, "on_watch_file", result.watch, result.outcome)
