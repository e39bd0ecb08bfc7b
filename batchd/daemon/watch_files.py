"""The file side of taking a dropped file: reading it safely, reading a JSON trigger, and
moving it to ``processed/`` or ``rejected/`` without ever overwriting a file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from batchd import failpoints
from batchd.daemon.watch_rules import REASON_SUFFIX

PROCESSED: Final = "processed"
REJECTED: Final = "rejected"

#: Largest ``.json`` trigger file read as parameters.
MAX_JSON_TRIGGER: Final = 1 << 20

_READ_CHUNK = 1 << 20

AFTER_REASON = failpoints.declare(
    "watcher.after_reason",
    "a rejected file's .reason is written in rejected/, the file is not moved beside it yet: "
    "the next rejection of that name replaces the .reason (its file is missing) and moves "
    "the file beside it",
)


class Rejected(Exception):
    """The file is turned away with ``reason`` (and ``outcome``)."""

    def __init__(self, reason: str, outcome: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


def read_file(path: Path, name: str) -> tuple[str, int, int, bytes | None]:
    """SHA-256, size and mtime (ns) of a regular file, and its content for a ``.json``
    trigger of at most MAX_JSON_TRIGGER bytes. Opened without following a symlink and
    without blocking on a FIFO that replaced the file meanwhile."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise Rejected(f"refused: {name} is a symlink", "refused") from None
        raise
    keep = name.lower().endswith(".json")
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Rejected(f"refused: {name} is not a regular file", "refused")
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
        raise Rejected(f"JSON trigger {name} is larger than {MAX_JSON_TRIGGER} bytes")
    return digest.hexdigest(), size, info.st_mtime_ns, content


def json_params(content: bytes | None) -> dict[str, Any]:
    """The parameters of a JSON trigger file: a JSON object, or Rejected saying why not."""
    assert content is not None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected(f"malformed JSON trigger: not UTF-8 ({error})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise Rejected(
            f"malformed JSON trigger: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    if not isinstance(value, dict):
        raise Rejected(f"malformed JSON trigger: expected an object, not {type(value).__name__}")
    return value


def reason_path(path: Path) -> Path:
    return path.with_name(path.name + REASON_SUFFIX)


def free_path(directory: Path, name: str) -> Path:
    """``directory/name``, or a variant with a UTC timestamp (and counter) before the suffix
    when a file of that name is there: nothing is ever overwritten. (A ``.reason`` whose
    file is missing is the record of a rejection a crash interrupted: its name is free.)"""
    directory.mkdir(exist_ok=True)
    candidate = directory / name
    if not os.path.lexists(candidate):
        return candidate
    stem, suffix = Path(name).stem, Path(name).suffix
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    counter = 1
    while True:
        tail = f"-{counter}" if counter > 1 else ""
        candidate = directory / f"{stem}.{stamp}{tail}{suffix}"
        if not os.path.lexists(candidate):
            return candidate
        counter += 1


def move(source: Path, dest: Path) -> None:
    """Rename ``source`` to ``dest`` (same file system: atomic; a symlink moves as a link);
    FileExistsError rather than overwrite a file that appeared there meanwhile."""
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, "a file of that name is already there", str(dest))
    os.rename(source, dest)


def reject_file(root: Path, path: Path, name: str, reason: str) -> Path:
    """Move the file at ``path`` to ``root/rejected/``, its ``.reason`` first: a crash in
    between leaves a ``.reason`` without its file, which the next rejection of the file
    completes (see :func:`free_path`). Returns where the file is now."""
    for _ in range(10):  # another file may take the chosen name meanwhile: choose again
        dest = free_path(root / REJECTED, name)
        reason_path(dest).write_text(reason + "\n", encoding="utf-8", errors="backslashreplace")
        failpoints.failpoint(AFTER_REASON)
        try:
            move(path, dest)
        except FileExistsError:
            continue
        return dest
    raise FileExistsError(errno.EEXIST, "no free name in rejected/", name)
