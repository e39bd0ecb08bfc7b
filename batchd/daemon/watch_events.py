"""When a watched file is ready to take: the watcher's eyes (watchdog lives here only).

:class:`FileEvents` observes the watched directories, notes what each file's events say
(opened, written, closed after writing, renamed in, deleted) and hands the
:class:`~batchd.daemon.watcher.Watcher` the files that are ready: at once after a
close-write or a rename into the directory, otherwise once their size and mtime have been
stable for the watch's ``stable_for``. The rules are those of :mod:`batchd.daemon.watcher`'s
module documentation; taking a file is the watcher's business, not this module's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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

from batchd.daemon.watch_rules import WatchState

log = logging.getLogger(__name__)

# How long watchdog holds a "moved out" event to pair it with its "moved in" (its default
# 0.5 s). Every event queued behind one waits too, and each file taken is moved out into
# processed/, so the next file dropped within 0.5 s would wait for it. The kernel reports
# both halves of a rename in the same read, so 10 ms is ample.
MOVE_PAIRING_SECONDS = 0.01


@dataclass
class _Pending:
    """A file waiting to be taken by the stability check (or for its close-write)."""

    signature: tuple[int, int, int] | None = None  # size, mtime_ns, inode
    since: float = 0.0  # monotonic time the signature was first seen
    open_count: int = 0  # opens minus closes seen (close events only)
    written: bool = False  # written since last closed: wait for the close-write
    not_before: float = 0.0  # retry time after an error


class _DirectoryHandler(FileSystemEventHandler):
    """Forwards the events of one directory (in the observer thread)."""

    def __init__(self, events: FileEvents, root: Path) -> None:
        super().__init__()
        self.events = events
        self.root = root

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self.events.on_event(self.root, event)
        except Exception:  # the observer thread must survive anything
            log.exception("watcher: error handling %r", event)


def _as_path(raw: bytes | str) -> Path | None:
    text = os.fsdecode(raw)
    return Path(text) if text else None


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


class FileEvents:
    """The files of the watched directories seen but not taken yet, and when each is ready.

    ``watch(states)`` says which watches there are, ``start()`` observes their directories,
    ``stop()`` stops observing and wakes :meth:`next_files`, which the watcher's worker
    thread calls in a loop. ``close_events=False`` forces the size-stable fallback even
    where close-write events exist (None: use them when available); :attr:`close_events`
    says, once started, whether they are used.
    """

    def __init__(self, close_events: bool | None = None) -> None:
        self._close_events_wanted = close_events
        self.close_events = False
        # Guards everything below; the watcher never holds it while calling in here.
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._states: dict[str, WatchState] = {}
        self._pending: dict[Path, _Pending] = {}
        self._ready: dict[Path, None] = {}  # take as soon as possible (ordered set)
        self._observer: BaseObserver | None = None
        self._observed: dict[Path, ObservedWatch] = {}
        self._stopping = True

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Observe the directories of the watches."""
        with self._lock:
            self._observer, self.close_events = _make_observer(self._close_events_wanted)
            self._stopping = False
            for root in self._roots():
                self._observe(root)
            self._observer.start()

    def stop(self, timeout: float) -> bool:
        """Stop observing, forget every file; whether it was observing."""
        with self._lock:
            observer, self._observer = self._observer, None
            self._observed.clear()
            self._pending.clear()
            self._ready.clear()
            self._stopping = True
            self._wake.notify_all()
        if observer is not None:
            observer.stop()
            observer.join(timeout)
        return observer is not None

    @property
    def thread(self) -> threading.Thread | None:
        """The observer's thread, while started."""
        with self._lock:
            return self._observer

    @property
    def stopping(self) -> bool:
        with self._lock:
            return self._stopping

    def watch(self, states: dict[str, WatchState]) -> None:
        """The watches are now ``states``: directories no longer watched are forgotten, new
        ones observed (when started)."""
        with self._lock:
            self._states = states
            roots = self._roots()
            for root in [root for root in self._observed if root not in roots]:
                self._unobserve(root)
            if self._observer is not None:
                for root in roots - set(self._observed):
                    self._observe(root)
            for path in [path for path in self._pending if path.parent not in roots]:
                del self._pending[path]

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

    # ------------------------------------------------------------------ asking

    def owner(self, path: Path) -> WatchState | None:
        """The first watch of the file's directory that wants it (None: ignore it)."""
        with self._lock:
            for state in self._states.values():
                if state.root == path.parent and state.groups(path.name) is not None:
                    return state
        return None

    def pending(self, state: WatchState) -> int:
        """How many files of ``state`` wait to be taken."""
        with self._lock:
            return sum(1 for path in self._pending if self.owner(path) is state)

    def observes(self, root: Path) -> bool:
        with self._lock:
            return root in self._observed

    # ------------------------------------------------------------------ noting

    def wait_for_stable(self, path: Path) -> None:
        """Take ``path`` once stable (a file a scan found too young)."""
        with self._lock:
            self._pending.setdefault(path, _Pending())
            self._wake.notify_all()

    def look_again(self, path: Path, after: float) -> None:
        """Consider ``path`` again in ``after`` seconds (unless stopped meanwhile)."""
        with self._lock:
            if not self._stopping:
                entry = self._pending.setdefault(path, _Pending())
                entry.not_before = time.monotonic() + after

    def on_event(self, root: Path, event: FileSystemEvent) -> None:
        """Note what happened to a file (in the observer thread)."""
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
                if dest is not None and dest.parent == root and self.owner(dest) is not None:
                    self._take_soon(dest)  # a rename is atomic: the file is complete
                return
            if src is None or src.parent != root or self.owner(src) is None:
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

    # ------------------------------------------------------------------ handing out

    def next_files(self) -> list[Path] | None:
        """The files ready now, then those that have become stable; waits a poll interval
        when none is ready. None once stopped."""
        with self._lock:
            if not self._stopping and not self._ready:
                self._wake.wait(self._poll_interval())
            if self._stopping:
                return None
            ready = list(self._ready)
            self._ready.clear()
        return ready + self._stable_files()

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
                state = self.owner(path)
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


__all__ = ["MOVE_PAIRING_SECONDS", "FileEvents"]
