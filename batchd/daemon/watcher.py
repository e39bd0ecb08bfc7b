"""Watches: a job started for each file dropped into a directory (watchdog lives here only).

A watch (:class:`~batchd.daemon.settings.WatchSettings`) names a directory, a job, a file
name filter and parameter templates. :class:`Watcher` observes every watched directory
(non-recursively) and takes each file that matches once its writer is done with it.

**When a file is taken**

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

**Taking a file**, in this order:

1. Read it once (``O_NOFOLLOW``): SHA-256, size; mtime from the open file.
2. Parameters: ``render_params(watch.params, variables)`` with the variables of
   :data:`WATCH_VARIABLES` and the regex's named groups. ``path`` is where the job finds the
   file: its final place in ``processed/``, because the file is moved there *before* the job
   starts. ``mtime`` is an aware datetime in the watcher's time zone, ``mtime_date`` its date.
   For a ``.json`` file (any case), its content must be a JSON object (at most
   :data:`MAX_JSON_TRIGGER` bytes, UTF-8), merged over the rendered templates: **the file's
   content wins**, as the more specific instruction (the templates are the watch's defaults).
   The parameters are then validated by the job (its ``params_model``). A bad template, bad
   JSON (the reason names line and column) or invalid parameters reject the file (outcome
   ``rejected``) *before* it is claimed, so the same file can be dropped again once the
   configuration is fixed.
3. Claim (watch, name, SHA-256) in the repository (:class:`TriggerStore`): unique in the
   database, so each file starts at most one instance across restarts and nodes. A file
   claimed before goes to ``rejected/`` (outcome ``duplicate``, reason ``duplicate: already
   taken ...``) — rejected rather than processed, because nothing was done with it. A claim
   left in state ``error``, or left ``claimed`` for longer than :data:`STALE_CLAIM` (its
   taker died between claiming and finishing), is taken over instead. A claim another node
   made less than :data:`STALE_CLAIM` ago is that node taking the file from a directory the
   nodes share: the file is left to it (outcome ``elsewhere``) and looked at again after
   :data:`STALE_CLAIM`, in case that node died before moving it.
4. Move the file to ``processed/``, then ``operator.start_async(job, params)``; the claim is
   finished ``started`` with the execution id. If the start is refused
   (``InvalidJobParameters``, ``JobInstanceAlreadyComplete``, ``JobExecutionAlreadyRunning``,
   any ``BatchError``), the file moves on to ``rejected/`` and the claim is finished
   ``rejected``; an unexpected error does the same with claim state ``error``.

A rejected file gets ``rejected/<name>.reason`` beside it (UTF-8 text, one line). Nothing in
``processed/`` or ``rejected/`` is ever overwritten: a name already there gets a UTC timestamp
(and, if need be, a counter) before its suffix: ``payments.20261121T013000Z.csv``.

If the repository cannot be reached (the claim fails), the file is left where it is and tried
again after :data:`RETRY_AFTER` seconds. Nothing raises out of the observer thread or the
worker thread; each file gets one log line (watch, name, outcome, execution id or reason),
and ``listener.on_watch_file(watch, outcome)`` is called when the listener has that method.
Outcomes: :data:`OUTCOMES`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from watchdog.events import (
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from batchd.daemon.settings import WatchSettings
from batchd.daemon.templates import TemplateError, check_templates, render_params
from batchd.engine.operator import JobOperator
from batchd.errors import BatchError
from batchd.repository.triggers import TriggerStore

log = logging.getLogger(__name__)

PROCESSED: Final = "processed"
REJECTED: Final = "rejected"
REASON_SUFFIX: Final = ".reason"

#: Variables every watch offers to its parameter templates (plus its regex's named groups).
WATCH_VARIABLES: Final = (
    "path",  # absolute path of the file in processed/, where the job reads it
    "name",  # the file's name as dropped
    "stem",  # name without its last suffix
    "suffix",  # last suffix with its dot ("" if none)
    "directory",  # the watched directory (absolute, resolved)
    "mtime",  # modification time, aware datetime in the watcher's time zone
    "mtime_date",  # its date
    "size",  # bytes
    "watch",  # the watch's name
    "sha256",  # hex digest of the content
)

#: What can happen to a file (the ``outcome`` of :class:`TakenFile`, metric label values).
OUTCOMES: Final = ("started", "duplicate", "rejected", "refused", "error", "elsewhere")

#: Largest ``.json`` trigger file read as parameters.
MAX_JSON_TRIGGER: Final = 1 << 20
#: Seconds before a file whose claim failed (repository unreachable) is tried again.
RETRY_AFTER: Final = 30.0
#: A claim still ``claimed`` after this long belongs to a taker that died: it is taken over.
STALE_CLAIM: Final = timedelta(minutes=2)

_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class TakenFile:
    """What happened to one file: ``outcome`` is one of :data:`OUTCOMES`; ``destination``
    is where the file is now (None if it could not be moved)."""

    watch: str
    name: str
    outcome: str
    execution_id: int | None = None
    reason: str | None = None
    destination: Path | None = None


class _Rejected(Exception):
    """Internal: the file is turned away with ``reason`` (and ``outcome``)."""

    def __init__(self, reason: str, outcome: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


# ---------------------------------------------------------------------------- validation


def _compile_regex(watch: WatchSettings) -> re.Pattern[str] | None:
    if watch.regex is None:
        return None
    try:
        return re.compile(watch.regex)
    except re.error as error:
        raise ValueError(f"watch {watch.name!r}: bad regex {watch.regex!r}: {error}") from None


def watch_variables(watch: WatchSettings) -> set[str]:
    """The template variables ``watch.params`` may use: :data:`WATCH_VARIABLES` and the
    named groups of its regex."""
    regex = _compile_regex(watch)
    groups = set(regex.groupindex) if regex is not None else set()
    return set(WATCH_VARIABLES) | groups


def validate_watch(watch: WatchSettings) -> None:
    """Raise ValueError naming what is wrong with a watch: a bad regex, a group that shadows a
    built-in variable, a directory that does not exist, a template with an unknown variable
    (TemplateError, a ValueError)."""
    regex = _compile_regex(watch)
    if regex is not None:
        shadowing = sorted(set(regex.groupindex) & set(WATCH_VARIABLES))
        if shadowing:
            raise ValueError(
                f"watch {watch.name!r}: regex group {', '.join(shadowing)} shadows a "
                "built-in variable; rename the group"
            )
    if not watch.directory.is_dir():
        raise ValueError(f"watch {watch.name!r}: directory {watch.directory} does not exist")
    if watch.stable_for.total_seconds() <= 0:
        raise ValueError(f"watch {watch.name!r}: stable_for must be positive")
    try:
        check_templates(watch.params, watch_variables(watch))
    except TemplateError as error:
        raise TemplateError(f"watch {watch.name!r}: {error}") from None


# ---------------------------------------------------------------------------- state


@dataclass
class _WatchState:
    """A configured watch with what is derived from it."""

    settings: WatchSettings
    root: Path  # the directory, resolved
    regex: re.Pattern[str] | None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.settings.name

    def groups(self, name: str) -> dict[str, str | None] | None:
        """The regex groups if this watch wants the file ``name``, else None."""
        if name.startswith(".") or name.endswith(REASON_SUFFIX):
            return None
        if not fnmatchcase(name, self.settings.pattern or "*"):
            return None
        if self.regex is None:
            return {}
        match = self.regex.fullmatch(name)
        return match.groupdict() if match is not None else None


@dataclass(frozen=True)
class _Elsewhere:
    """Another node holds a fresh claim on the file: it is moving it."""

    reason: str


@dataclass
class _Pending:
    """A file waiting to be taken by the stability check (or for its close-write)."""

    signature: tuple[int, int, int] | None = None  # size, mtime_ns, inode
    since: float = 0.0  # monotonic time the signature was first seen
    open_count: int = 0  # opens minus closes seen (close events only)
    written: bool = False  # written since last closed: wait for the close-write
    not_before: float = 0.0  # retry time after an error


class _DirectoryHandler(FileSystemEventHandler):
    """Forwards the events of one directory to the watcher (in the observer thread)."""

    def __init__(self, watcher: Watcher, root: Path) -> None:
        super().__init__()
        self.watcher = watcher
        self.root = root

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self.watcher._on_event(self.root, event)
        except Exception:  # the observer thread must survive anything
            log.exception("watcher: error handling %r", event)


def _as_path(raw: bytes | str) -> Path | None:
    text = os.fsdecode(raw)
    return Path(text) if text else None


# How long watchdog holds a "moved out" event to pair it with its "moved in" (its default
# 0.5 s). Every event queued behind one waits too, and each file taken is moved out into
# processed/, so the next file dropped within 0.5 s would wait for it. The kernel reports
# both halves of a rename in the same read, so 10 ms is ample.
MOVE_PAIRING_SECONDS = 0.01


def _shorten_move_pairing() -> None:
    try:
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
    except ImportError:  # another watchdog layout: keep its default
        return
    InotifyMoveEventGrouper.delay = MOVE_PAIRING_SECONDS


def _make_observer(close_events: bool | None) -> tuple[BaseObserver, bool]:
    """The observer, and whether it reports close-write (inotify, with unmatched moves
    reported as moves so that a file moved in from elsewhere is taken at once)."""
    if close_events is not False:
        try:
            from watchdog.observers.inotify import InotifyObserver

            _shorten_move_pairing()
            return InotifyObserver(generate_full_events=True), True
        except Exception as error:  # not Linux, or no inotify instance left
            if close_events:
                raise
            log.info("watcher: no close-write events (%s); files are taken once stable", error)
    return Observer(), False


# ---------------------------------------------------------------------------- the watcher


class Watcher:
    """Starts a job for each file dropped into a watched directory (see the module docs).

    ``start()`` observes the directories and takes the files already there; ``stop()``
    stops observing (running jobs are not touched); ``reconfigure(watches)`` adds, changes
    and removes watches (SIGHUP); ``scan(name=None)`` looks at every file now and returns
    what it took; ``describe()`` reports each watch.

    ``timezone`` is that of ``mtime``/``mtime_date`` (the daemon's); ``close_events=False``
    forces the size-stable fallback even where close-write events exist (None: use them
    when available). ``listener`` may have ``on_watch_file(watch, outcome)``.
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
    ) -> None:
        self._operator = operator
        self._store = store
        self._listener = listener
        self._tz: tzinfo = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
        self._close_events_wanted = close_events
        self.close_events = False  # whether close-write events are used; known after start()
        # Lock order: _take_lock, then _lock. _lock guards everything below; _take_lock
        # makes taking files one at a time, so that a file seen by an event and by a scan
        # is taken once (the second finds it gone).
        self._take_lock = threading.RLock()
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._states: dict[str, _WatchState] = self._build_states(watches, {})
        self._pending: dict[Path, _Pending] = {}
        self._ready: dict[Path, None] = {}  # take as soon as possible (ordered set)
        self._observer: BaseObserver | None = None
        self._observed: dict[Path, ObservedWatch] = {}
        self._worker: threading.Thread | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Observe every watched directory, then take the files already there."""
        with self._lock:
            if self._worker is not None:
                raise RuntimeError("the watcher is already started")
            self._observer, self.close_events = _make_observer(self._close_events_wanted)
            self._stopping = False
            for root in self._roots():
                self._observe(root)
            self._observer.start()
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
            observer, worker = self._observer, self._worker
            self._observer, self._worker = None, None
            self._observed.clear()
            self._pending.clear()
            self._ready.clear()
            self._stopping = True
            self._wake.notify_all()
        if observer is not None:
            observer.stop()
            observer.join(timeout)
        if worker is not None:
            worker.join(timeout)
        if observer is not None:
            log.info("watcher stopped")

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
            roots = self._roots()
            for root in [root for root in self._observed if root not in roots]:
                self._unobserve(root)
            if self._observer is not None:
                for root in roots - set(self._observed):
                    self._observe(root)
            for path in [path for path in self._pending if path.parent not in roots]:
                del self._pending[path]
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
                    with self._lock:
                        self._pending.setdefault(path, _Pending())
                        self._wake.notify_all()
        return taken

    def _listing(self, state: _WatchState) -> list[tuple[Path, os.stat_result]]:
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
                    "pending": sum(1 for path in self._pending if self._owner(path) is state),
                    "files": dict(state.counts),
                    "observed": state.root in self._observed,
                    "close_events": self.close_events,
                }
                for state in self._states.values()
            ]

    # ----------------------------------------------------- configuration helpers

    @staticmethod
    def _build_states(
        watches: Iterable[WatchSettings], old: dict[str, _WatchState]
    ) -> dict[str, _WatchState]:
        states: dict[str, _WatchState] = {}
        for watch in watches:
            if watch.name in states:
                raise ValueError(f"two watches are named {watch.name!r}")
            validate_watch(watch)
            previous = old.get(watch.name)
            states[watch.name] = _WatchState(
                settings=watch,
                root=watch.directory.resolve(),
                regex=_compile_regex(watch),
                counts=previous.counts if previous is not None else {},
            )
        return states

    def _roots(self) -> set[Path]:
        return {state.root for state in self._states.values()}

    def _observe(self, root: Path) -> None:
        assert self._observer is not None
        self._observed[root] = self._observer.schedule(
            _DirectoryHandler(self, root), str(root), recursive=False
        )

    def _unobserve(self, root: Path) -> None:
        watch = self._observed.pop(root)
        if self._observer is not None:
            try:
                self._observer.unschedule(watch)
            except KeyError:
                pass  # its emitter already ended (the directory was deleted)

    def _owner(self, path: Path) -> _WatchState | None:
        """The first watch of the file's directory that wants it (None: ignore it)."""
        for state in self._states.values():
            if state.root == path.parent and state.groups(path.name) is not None:
                return state
        return None

    # ------------------------------------------------------- events (observer thread)

    def _on_event(self, root: Path, event: FileSystemEvent) -> None:
        """Note what happened to a file; the worker thread does the taking."""
        if event.is_directory:
            return
        src = _as_path(event.src_path)
        with self._lock:
            if self._stopping:
                return
            if isinstance(event, FileMovedEvent):
                dest = _as_path(event.dest_path)
                if src is not None and src.parent == root:
                    self._pending.pop(src, None)
                if dest is not None and dest.parent == root and self._owner(dest) is not None:
                    self._take_soon(dest)  # a rename is atomic: the file is complete
                return
            if src is None or src.parent != root or self._owner(src) is None:
                return
            if isinstance(event, FileDeletedEvent):
                self._pending.pop(src, None)
            elif isinstance(event, FileClosedEvent):
                if self.close_events:
                    self._take_soon(src)
            elif isinstance(event, FileClosedNoWriteEvent):
                entry = self._pending.get(src)
                if entry is not None:
                    entry.open_count = max(0, entry.open_count - 1)
            elif isinstance(event, FileOpenedEvent):
                if self.close_events:
                    self._pending.setdefault(src, _Pending()).open_count += 1
            elif isinstance(event, FileModifiedEvent):
                entry = self._pending.setdefault(src, _Pending())
                if self.close_events:
                    entry.written = True  # a close-write will follow
            elif isinstance(event, FileCreatedEvent):
                self._pending.setdefault(src, _Pending())
            self._wake.notify_all()

    def _take_soon(self, path: Path) -> None:
        self._pending.pop(path, None)
        self._ready[path] = None
        self._wake.notify_all()

    # ------------------------------------------------------------ the worker thread

    def _run(self) -> None:
        """Take the files that are ready, and those that have become stable."""
        while True:
            with self._lock:
                if not self._stopping and not self._ready:
                    self._wake.wait(self._poll_interval())
                if self._stopping:
                    return
                ready = list(self._ready)
                self._ready.clear()
            for path in ready + self._stable_files():
                with self._lock:
                    if self._stopping:
                        return
                self._take_path(path)

    def _poll_interval(self) -> float:
        shortest = min(
            (state.settings.stable_for.total_seconds() for state in self._states.values()),
            default=1.0,
        )
        return min(max(shortest / 5, 0.02), 0.25)

    def _stable_files(self) -> list[Path]:
        """Pending files whose size and mtime have not changed for their ``stable_for``
        (or whose mtime is that old); they leave the pending set."""
        now, wall = time.monotonic(), time.time()
        stable = []
        with self._lock:
            for path, entry in list(self._pending.items()):
                if now < entry.not_before:
                    continue
                if self.close_events and (entry.open_count > 0 or entry.written):
                    continue  # open or being written: the close-write will take it
                state = self._owner(path)
                try:
                    info = os.lstat(path)
                except OSError:
                    state = None
                if state is None:
                    del self._pending[path]
                    continue
                signature = (info.st_size, info.st_mtime_ns, info.st_ino)
                if signature != entry.signature:
                    entry.signature, entry.since = signature, now
                stable_for = state.settings.stable_for.total_seconds()
                if now - entry.since >= stable_for or wall - info.st_mtime >= stable_for:
                    del self._pending[path]
                    stable.append(path)
        return stable

    # ----------------------------------------------------------------- taking a file

    def _take_path(self, path: Path) -> TakenFile | None:
        """Take one file if a watch still wants it and it is still there. Never raises."""
        with self._take_lock:
            with self._lock:
                state = self._owner(path)
            if state is None:
                return None
            try:
                result = self._take(state, path)
            except Exception as error:  # e.g. the repository is unreachable
                log.exception(
                    "watch %s: %s: error, retrying in %gs", state.name, path.name, RETRY_AFTER
                )
                self._look_again(path, RETRY_AFTER)
                result = TakenFile(state.name, path.name, "error", reason=str(error))
        if result is not None:
            self._report(state, result)
        return result

    def _take(self, state: _WatchState, path: Path) -> TakenFile | None:
        name = path.name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None  # taken or removed meanwhile
        if stat.S_ISDIR(info.st_mode):
            return None
        try:
            self._check_safe(state, path, info)
            digest, size, mtime_ns, content = _read_file(path, name)
        except FileNotFoundError:
            return None
        except _Rejected as refusal:
            return self._reject(state, path, name, refusal.outcome, refusal.reason)
        dest = _free_path(state.root / PROCESSED, name)
        variables = self._variables(state, name, dest, size, mtime_ns, digest)
        try:
            params = self._params(state, name, variables, content)
        except _Rejected as rejection:
            return self._reject(state, path, name, rejection.outcome, rejection.reason)
        claim_id = self._claim(state, name, digest)
        if isinstance(claim_id, _Elsewhere):
            self._look_again(path, STALE_CLAIM.total_seconds())
            return TakenFile(state.name, name, "elsewhere", reason=claim_id.reason)
        if isinstance(claim_id, str):
            if not os.path.lexists(path):
                return None  # the node holding the claim has moved it meanwhile
            return self._reject(state, path, name, "duplicate", claim_id)
        return self._start(state, path, dest, name, claim_id, params)

    def _look_again(self, path: Path, after: float) -> None:
        with self._lock:
            if not self._stopping:
                entry = self._pending.setdefault(path, _Pending())
                entry.not_before = time.monotonic() + after

    @staticmethod
    def _check_safe(state: _WatchState, path: Path, info: os.stat_result) -> None:
        """Refuse symlinks, paths resolving elsewhere and anything but regular files."""
        if stat.S_ISLNK(info.st_mode):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            raise _Rejected(f"refused: {path.name} is a symlink (to {target})", "refused")
        if Path(os.path.realpath(path)).parent != state.root:
            raise _Rejected(f"refused: {path.name} resolves outside {state.root}", "refused")
        if not stat.S_ISREG(info.st_mode):
            raise _Rejected(f"refused: {path.name} is not a regular file", "refused")

    def _variables(
        self, state: _WatchState, name: str, dest: Path, size: int, mtime_ns: int, digest: str
    ) -> dict[str, Any]:
        mtime = datetime.fromtimestamp(mtime_ns / 1e9, tz=self._tz)
        groups = state.groups(name) or {}
        return {
            **groups,
            "path": str(dest),
            "name": name,
            "stem": Path(name).stem,
            "suffix": Path(name).suffix,
            "directory": str(state.root),
            "mtime": mtime,
            "mtime_date": mtime.date(),
            "size": size,
            "watch": state.name,
            "sha256": digest,
        }

    def _params(
        self, state: _WatchState, name: str, variables: dict[str, Any], content: bytes | None
    ) -> dict[str, Any]:
        """Rendered templates, merged with a JSON trigger's content, validated by the job."""
        try:
            params = render_params(state.settings.params, variables)
        except TemplateError as error:
            raise _Rejected(f"bad parameter template: {error}") from None
        if name.lower().endswith(".json"):
            params.update(_json_params(content))
        try:
            self._operator.registry.get(state.settings.job).parameters(params)
        except BatchError as error:  # NoSuchJob, InvalidJobParameters
            raise _Rejected(str(error)) from None
        return params

    def _claim(self, state: _WatchState, name: str, digest: str) -> int | str | _Elsewhere:
        """The claim id, the reason why the file is a duplicate, or :class:`_Elsewhere`."""
        claim_id = self._store.claim_file(state.name, name, digest)
        if claim_id is not None:
            return claim_id
        claim = self._store.file_claim(state.name, name, digest)
        if claim is None:  # claimed and gone again: cannot happen, but do not guess
            return f"duplicate: {name} with this content was already taken"
        claimed_at = claim.get("claimed_at")
        if isinstance(claimed_at, datetime) and claimed_at.tzinfo is None:
            claimed_at = claimed_at.replace(tzinfo=UTC)
        stale = (
            claim.get("state") == "claimed"
            and isinstance(claimed_at, datetime)
            and self._store.repository.clock() - claimed_at > STALE_CLAIM
        )
        node = claim.get("node")
        if (
            claim.get("state") == "claimed"
            and not stale
            and node is not None
            and node != self._store.node
        ):
            return _Elsewhere(f"node {node} claimed it and is taking it")
        if claim.get("state") == "error" or stale:
            log.warning(
                "watch %s: %s: taking over claim %s left %s",
                state.name,
                name,
                claim["id"],
                claim.get("state"),
            )
            return int(claim["id"])
        when = claimed_at.isoformat(timespec="seconds") if claimed_at else "before"
        execution = claim.get("job_execution_id")
        return f"duplicate: already taken at {when} (claim {claim['id']}, {claim.get('state')}" + (
            f", execution {execution})" if execution is not None else ")"
        )

    def _start(
        self,
        state: _WatchState,
        path: Path,
        dest: Path,
        name: str,
        claim_id: int,
        params: dict[str, Any],
    ) -> TakenFile:
        """Move the claimed file to processed/, then start the job."""
        try:
            dest = _move(path, dest)
        except OSError as error:
            reason = f"cannot move {name} to {PROCESSED}/: {error}"
            self._finish(claim_id, "error", None, reason)
            return TakenFile(state.name, name, "error", reason=reason)
        try:
            execution = self._operator.start_async(state.settings.job, params)
        except BatchError as error:
            self._finish(claim_id, "rejected", None, str(error))
            return self._reject(state, dest, name, "rejected", str(error))
        except Exception as error:
            log.exception("watch %s: %s: starting %s failed", state.name, name, state.settings.job)
            reason = f"error: starting job {state.settings.job!r} failed: {error}"
            self._finish(claim_id, "error", None, reason)
            return self._reject(state, dest, name, "error", reason)
        self._finish(claim_id, "started", execution.id, None)
        return TakenFile(state.name, name, "started", execution.id, destination=dest)

    def _finish(
        self, claim_id: int, claim_state: str, execution_id: int | None, reason: str | None
    ) -> None:
        try:
            self._store.finish_file(claim_id, claim_state, execution_id, reason)
        except Exception:
            log.exception("watcher: cannot record claim %d as %s", claim_id, claim_state)

    def _reject(
        self, state: _WatchState, path: Path, name: str, outcome: str, reason: str
    ) -> TakenFile:
        """Move the file to rejected/ and write its ``.reason`` beside it."""
        try:
            dest: Path | None = _move(path, _free_path(state.root / REJECTED, name))
            assert dest is not None
            dest.with_name(dest.name + REASON_SUFFIX).write_text(reason + "\n", encoding="utf-8")
        except OSError as error:
            log.error("watch %s: cannot move %s to %s/: %s", state.name, name, REJECTED, error)
            dest = None
        return TakenFile(state.name, name, outcome, reason=reason, destination=dest)

    def _report(self, state: _WatchState, result: TakenFile) -> None:
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
        hook = getattr(self._listener, "on_watch_file", None)
        if callable(hook):
            try:
                hook(result.watch, result.outcome)
            except Exception:
                log.exception("watcher: listener %r failed in on_watch_file", self._listener)


# ---------------------------------------------------------------------------- file helpers


def _read_file(path: Path, name: str) -> tuple[str, int, int, bytes | None]:
    """SHA-256, size and mtime (ns) of a regular file, and its content for a ``.json``
    trigger of at most MAX_JSON_TRIGGER bytes. Opened without following a symlink and
    without blocking on a FIFO that replaced the file meanwhile."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _Rejected(f"refused: {name} is a symlink", "refused") from None
        raise
    keep = name.lower().endswith(".json")
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _Rejected(f"refused: {name} is not a regular file", "refused")
        digest = hashlib.sha256()
        kept: bytearray | None = bytearray() if keep else None
        size = 0
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if kept is not None:
                kept += chunk
                if len(kept) > MAX_JSON_TRIGGER:
                    kept = None
    content = bytes(kept) if kept is not None else None
    if keep and content is None:
        raise _Rejected(f"JSON trigger {name} is larger than {MAX_JSON_TRIGGER} bytes")
    return digest.hexdigest(), size, info.st_mtime_ns, content


def _json_params(content: bytes | None) -> dict[str, Any]:
    """The parameters of a JSON trigger file: a JSON object, or _Rejected saying why not."""
    assert content is not None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Rejected(f"malformed JSON trigger: not UTF-8 ({error})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise _Rejected(
            f"malformed JSON trigger: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    if not isinstance(value, dict):
        raise _Rejected(f"malformed JSON trigger: expected an object, not {type(value).__name__}")
    return value


def _free_path(directory: Path, name: str) -> Path:
    """``directory/name``, or a variant with a UTC timestamp (and counter) before the suffix
    when that name, or its ``.reason``, is taken: nothing is ever overwritten."""
    directory.mkdir(exist_ok=True)

    def free(candidate: Path) -> bool:
        reason = candidate.with_name(candidate.name + REASON_SUFFIX)
        return not os.path.lexists(candidate) and not os.path.lexists(reason)

    candidate = directory / name
    if free(candidate):
        return candidate
    stem, suffix = Path(name).stem, Path(name).suffix
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    counter = 1
    while True:
        tail = f"-{counter}" if counter > 1 else ""
        candidate = directory / f"{stem}.{stamp}{tail}{suffix}"
        if free(candidate):
            return candidate
        counter += 1


def _move(source: Path, dest: Path) -> Path:
    """Rename ``source`` to ``dest`` (same file system: atomic); a symlink moves as a link."""
    if os.path.lexists(dest):  # chosen free, taken since: pick again rather than overwrite
        dest = _free_path(dest.parent, dest.name)
    os.rename(source, dest)
    return dest
