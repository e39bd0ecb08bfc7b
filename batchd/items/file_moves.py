"""File moves as steps (GoBatch's FileMove and CopyFile): tasklets that move, copy or archive
the files a glob matches into a directory, with the writers' atomicity rules.

Every file appears at its destination whole or not at all (copied to a hidden partial file,
fsynced, renamed, directory fsynced); a move deletes the source only once its copy is in
place; an archive merges what an earlier, interrupted run archived, so that a kill between
two durable acts, followed by a restart, loses and duplicates nothing. Use them as
``StepBuilder("archive").tasklet(ArchiveFiles("in/*.csv", "archive/{date}.zip", remove=True))``.
Remote stores are out of scope. Paths are templates over the job parameters.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import shutil
import tarfile
import zipfile
from typing import Any

from batchd import failpoints
from batchd.items.checksums import file_digest, partial_name
from batchd.items.files import _fsync_directory
from batchd.items.paths import PathLike, resolve_path
from batchd.model import ExecutionContext, StepContext

AFTER_COPY_BEFORE_DELETE = failpoints.declare(
    "files.after_copy_before_delete",
    "a moved file is in place at its destination, its source not deleted yet: the restart "
    "finds the same content at the destination and deletes the source",
)
AFTER_ARCHIVE_BEFORE_REMOVE = failpoints.declare(
    "files.after_archive_before_remove",
    "the archive is in place, some sources not removed yet: the restart merges the archive's "
    "members with the sources left, publishes it again and removes them",
)


def _sources(pattern: PathLike, ctx: StepContext) -> list[str]:
    resolved = resolve_path(pattern, ExecutionContext(params=ctx.params), reading=True)
    return sorted(path for path in glob.glob(resolved) if os.path.isfile(path))


def _target(directory: PathLike, ctx: StepContext) -> str:
    return resolve_path(directory, ExecutionContext(params=ctx.params))


def _same_content(first: str, second: str) -> bool:
    return os.path.getsize(first) == os.path.getsize(second) and file_digest(
        first, "sha256"
    ) == file_digest(second, "sha256")


def publish_copy(source: str, destination: str) -> None:
    """Copy ``source`` onto ``destination`` atomically (partial file, fsync, rename)."""
    partial = partial_name(destination)
    with open(source, "rb") as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    shutil.copystat(source, partial)
    os.replace(partial, destination)
    _fsync_directory(os.path.dirname(destination))


class _Transfer:
    """Copies (and with ``delete``, moves) every file ``source`` matches into ``target``."""

    delete = False

    def __init__(self, source: PathLike, target: PathLike, *, overwrite: bool = False) -> None:
        self.source = source
        self.target = target
        self.overwrite = overwrite

    def __call__(self, ctx: StepContext) -> None:
        files = _sources(self.source, ctx)
        directory = _target(self.target, ctx)
        os.makedirs(directory, exist_ok=True)
        ctx.step_execution.read_count = len(files)
        for path in files:
            ctx.check_stop()
            destination = os.path.join(directory, os.path.basename(path))
            if os.path.exists(destination) and not self.overwrite:
                if not _same_content(path, destination):
                    raise FileExistsError(
                        errno.EEXIST,
                        f"{destination} exists with other content (overwrite=False)",
                        destination,
                    )
                # The same file: a restart after the copy, or the same file again.
            elif not (self.delete and _rename(path, destination)):
                publish_copy(path, destination)
            if self.delete and os.path.exists(path):
                failpoints.failpoint(AFTER_COPY_BEFORE_DELETE)
                os.remove(path)
                _fsync_directory(os.path.dirname(path))
            ctx.step_execution.write_count += 1


def _rename(path: str, destination: str) -> bool:
    """Move by rename (one atomic act) when both are on one file system."""
    try:
        os.replace(path, destination)
    except OSError as error:
        if error.errno == errno.EXDEV:
            return False
        raise
    _fsync_directory(os.path.dirname(destination))
    _fsync_directory(os.path.dirname(path))
    return True


class CopyFiles(_Transfer):
    """A tasklet (GoBatch's CopyFile): copy every file ``source`` (a glob) matches into the
    directory ``target``, each appearing whole. A destination with other content fails the
    step unless ``overwrite=True``. ``read_count``/``write_count``: files found / copied."""


class MoveFiles(_Transfer):
    """A tasklet (GoBatch's FileMove): move every file ``source`` matches into ``target``;
    by rename on one file system, else copied whole and then the source deleted."""

    delete = True


class ArchiveFiles:
    """A tasklet: put every file ``source`` matches into the archive ``archive`` (``.zip``,
    ``.tar.gz`` or ``.tgz``), published atomically; with ``remove=True`` the sources are
    removed once it is in place. An archive that exists already keeps its members (a member
    of the same name is replaced), so a restart after a partial removal loses nothing."""

    def __init__(self, source: PathLike, archive: PathLike, *, remove: bool = False) -> None:
        self.source = source
        self.archive = archive
        self.remove = remove

    def __call__(self, ctx: StepContext) -> None:
        files = _sources(self.source, ctx)
        archive = _target(self.archive, ctx)
        ctx.step_execution.read_count = len(files)
        if not files:
            return
        os.makedirs(os.path.dirname(archive) or ".", exist_ok=True)
        partial = partial_name(archive)
        names = {os.path.basename(path) for path in files}
        if archive.endswith(".zip"):
            _write_zip(archive, partial, files, names)
        elif archive.endswith((".tar.gz", ".tgz")):
            _write_tar(archive, partial, files, names)
        else:
            raise ValueError(f"archive {archive!r}: name it .zip, .tar.gz or .tgz")
        os.replace(partial, archive)
        _fsync_directory(os.path.dirname(archive))
        ctx.step_execution.write_count = len(files)
        if self.remove:
            for path in files:
                failpoints.failpoint(AFTER_ARCHIVE_BEFORE_REMOVE)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            for directory in {os.path.dirname(path) for path in files}:
                _fsync_directory(directory)


def _write_zip(archive: str, partial: str, files: list[str], names: set[str]) -> None:
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as out:
        if os.path.exists(archive):
            with zipfile.ZipFile(archive) as old:
                for info in old.infolist():
                    if info.filename not in names:
                        out.writestr(info, old.read(info))
        for path in files:
            out.write(path, os.path.basename(path))
    _fsync_file(partial)


def _write_tar(archive: str, partial: str, files: list[str], names: set[str]) -> None:
    with tarfile.open(partial, "w:gz") as out:
        if os.path.exists(archive):
            with tarfile.open(archive, "r:gz") as old:
                for member in old.getmembers():
                    if member.name not in names:
                        out.addfile(member, old.extractfile(member))
        for path in files:
            out.add(path, os.path.basename(path))
    _fsync_file(partial)


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def archive_members(archive: str) -> dict[str, str]:
    """Member name -> sha256 of its content (for checks and tests)."""
    members: dict[str, Any] = {}
    if archive.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                members[name] = hashlib.sha256(zf.read(name)).hexdigest()
    else:
        with tarfile.open(archive, "r:gz") as tf:
            for member in tf.getmembers():
                data = tf.extractfile(member)
                members[member.name] = hashlib.sha256(data.read() if data else b"").hexdigest()
    return members
