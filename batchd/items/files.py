"""What the file readers and writers share: checksum sidecars, exact line positions for
restartable reading, and one restartable, atomic output file (path templates are in
:mod:`batchd.items.paths`)."""

from __future__ import annotations

import contextlib
import errno
import os
from abc import abstractmethod
from collections.abc import Callable
from typing import IO, Any

from batchd import failpoints
from batchd.errors import (
    CheckpointMismatch,
    InputFileNotFound,
    ItemFormatError,
    ItemParseError,
    OutputCheckpointError,
    OutputFileError,
)
from batchd.items.base import ItemReader, ItemWriter

# Re-exported: the readers, writers, partitioners and aggregators take them from here.
from batchd.items.checksums import CHECKSUM_ALGORITHMS as CHECKSUM_ALGORITHMS
from batchd.items.checksums import CHECKSUM_SIDECARS as CHECKSUM_SIDECARS
from batchd.items.checksums import ChecksumSpec as ChecksumSpec
from batchd.items.checksums import checksum_algorithms as checksum_algorithms
from batchd.items.checksums import file_digest as file_digest
from batchd.items.checksums import partial_name as _partial_name
from batchd.items.checksums import verify_checksums as verify_checksums
from batchd.items.checksums import write_checksum_sidecar as write_checksum_sidecar
from batchd.items.paths import PathLike as PathLike
from batchd.items.paths import resolve_path as resolve_path
from batchd.items.progress import Progress
from batchd.model import ExecutionContext

_READ_BLOCK = 1 << 20

AFTER_PUBLISH_BEFORE_FLAG = failpoints.declare(
    "items.after_publish_before_flag",
    "an output file is published, its done flag is not written: the step's end is not "
    "recorded either, so a restart takes the file back, publishes it again and writes the flag",
)


def describe(path: str, line: int | None = None, field: str | None = None) -> str:
    """``"payments.csv line 17, field 'amount'"``: how errors name a place in a file."""
    text = os.path.basename(path) or path
    if line is not None:
        text += f" line {line}"
    if field is not None:
        text += f", field {field!r}"
    return text


def parse_error(path: str, line: int | None, field: str | None, message: str) -> ItemParseError:
    """An :class:`ItemParseError` whose message names the file, line and field."""
    return ItemParseError(f"{describe(path, line, field)}: {message}", path, line, field)


# ------------------------------------------------------------------------------- input lines
class LineSource:
    """An input file read line by line in binary, with the byte offset and the number of the
    last physical line read kept exactly, so a checkpoint can seek straight back to them.

    Iterating yields decoded lines (line endings kept), which is what ``csv.reader`` wants;
    it is a plain iterator object, not a generator, so it stays usable after it raised
    :class:`ItemParseError` for undecodable bytes. Line splitting is on ``\\n``: the encoding
    must be ASCII-compatible (UTF-8, Latin-1, cp1252, ...).
    """

    def __init__(self, path: str, encoding: str) -> None:
        self.path = path
        self.encoding = encoding
        self.offset = 0  # byte offset of the next unread line
        self.line = 0  # number of physical lines before ``offset``
        try:
            self._file: IO[bytes] = open(path, "rb")  # noqa: SIM115 (closed by close())
        except FileNotFoundError:
            raise InputFileNotFound(errno.ENOENT, "input file not found", path) from None
        except IsADirectoryError:
            raise InputFileNotFound(errno.EISDIR, "input path is a directory", path) from None
        self._readline = self._file.readline  # bound once: __next__ runs once per line

    def seek(self, offset: int, line: int) -> None:
        """Continue at ``offset``, the start of physical line ``line + 1``."""
        size = os.fstat(self._file.fileno()).st_size
        if offset > size:
            raise CheckpointMismatch(
                f"cannot resume reading {self.path}: the checkpoint is at byte {offset} "
                f"but the file has only {size} bytes (was it replaced?)"
            )
        self._file.seek(offset)
        self.offset = offset
        self.line = line

    def align(self, offset: int) -> None:
        """Continue at the first line that starts at or after byte ``offset`` (partitions by
        byte range: a line belongs to the range its first byte is in)."""
        if offset <= self.offset:
            return
        self._file.seek(self.offset)
        lines = self.line
        remaining = offset - 1 - self.offset  # bytes strictly before ``offset - 1``
        while remaining > 0:
            block = self._file.read(min(remaining, _READ_BLOCK))
            if not block:
                break
            lines += block.count(b"\n")
            remaining -= len(block)
        self._file.seek(offset - 1)
        rest = self._file.readline()  # ends the line that byte ``offset - 1`` is in
        if rest.endswith(b"\n"):
            lines += 1
        self.offset = offset - 1 + len(rest)
        self.line = lines

    def readline(self) -> bytes:
        """The next raw line (with its ``\\n``), or ``b""`` at the end."""
        raw = self._file.readline()
        if raw:
            self.offset += len(raw)
            self.line += 1
        return raw

    def decode(self, raw: bytes, line: int, *, first: bool = False) -> str:
        try:
            text = raw.decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise parse_error(
                self.path,
                line,
                None,
                f"cannot decode bytes as {self.encoding}: {exc.reason} at column {exc.start + 1}",
            ) from None
        if first and text.startswith("\ufeff"):
            text = text[1:]  # a byte-order mark is not part of the first field
        return text

    def __iter__(self) -> LineSource:
        return self

    def __next__(self) -> str:
        # Called once per line by ``csv.reader``: this is the readers' hot path, so it does
        # the work of readline() and decode() inline (one Python frame per line) and leaves
        # the byte-order mark and the error message to decode(), for the first line and for
        # undecodable bytes only.
        raw = self._readline()
        if not raw:
            raise StopIteration
        first = self.offset == 0
        self.offset += len(raw)
        self.line += 1
        if first:
            return self.decode(raw, self.line, first=True)
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError:
            return self.decode(raw, self.line)  # raises the ItemParseError naming the line

    def close(self) -> None:
        self._file.close()


class FileItemReader(ItemReader):
    """Base of the line-based file readers.

    ExecutionContext keys (``<name>`` is the class name or ``name=``): ``<name>.offset``, the
    byte offset after the last item handed out by ``read()``, and ``<name>.line``, the number
    of physical lines before it. ``open(ctx)`` resolves the path template, verifies checksum
    sidecars, then seeks to the saved offset (or to ``ctx.partition["start_offset"]`` on a
    first run) and stops at lines starting at or after ``ctx.partition["end_offset"]``.
    """

    _runtime: tuple[str, ...] = ("_source", "_path", "_end", "_progress", "_start")

    def __init__(
        self,
        path: PathLike,
        *,
        encoding: str = "utf-8",
        name: str | None = None,
        require_checksum: ChecksumSpec = False,
    ):
        super().__init__(name)
        self.path = path
        self.encoding = encoding
        # A missing sidecar fails the step instead of passing silently (see verify_checksums).
        self.require_checksum = require_checksum
        checksum_algorithms(require_checksum if require_checksum is not True else None)
        self._source: LineSource | None = None
        self._path: str | None = None
        self._end: int | None = None
        self._start = 0  # the byte the range starts at (a partition's start_offset)
        self._progress: Progress | None = None

    @property
    def resolved_path(self) -> str | None:
        """The path being read (template filled), once opened."""
        return self._path

    def open(self, ctx: ExecutionContext) -> None:
        self.close()
        path = resolve_path(self.path, ctx, reading=True)
        source = LineSource(path, self.encoding)
        try:
            verify_checksums(path, require=self.require_checksum)
            self._path = path
            self._begin(source)
            partition = ctx.partition or {}
            saved = ctx.get(self.key("offset"))
            if saved is not None:
                source.seek(int(saved), int(ctx.get(self.key("line"), 0)))
            elif partition.get("start_offset"):
                source.align(int(partition["start_offset"]))
            end = partition.get("end_offset")
            self._end = None if end is None else int(end)
            self._start = int(partition.get("start_offset") or 0)
        except BaseException:
            source.close()
            raise
        self._source = source
        done = max(0, source.offset - self._start)
        self._progress = Progress("bytes", self.total(ctx), done)

    def total(self, ctx: ExecutionContext) -> int | None:
        """The bytes of this reader's range (its file, or its partition's offsets): how
        far it is comes from its byte offset, so the total costs one stat, once."""
        if self._path is None:
            return None
        end = self._end if self._end is not None else os.path.getsize(self._path)
        return max(0, end - self._start)

    def _begin(self, source: LineSource) -> None:
        """Read what comes before the records (a header) from offset 0."""

    def _next_line(self) -> tuple[int, bytes] | None:
        """(line number, raw bytes) of the next line of this reader's range, or None."""
        source = self._opened()
        if self._end is not None and source.offset >= self._end:
            return None
        raw = source.readline()
        return (source.line, raw) if raw else None

    def _next_text(self) -> tuple[int, str] | None:
        """(line number, text without its line ending) of the next non-blank line of this
        reader's range, or None at its end: a record of a line-per-record format."""
        source = self._opened()
        while True:
            first = source.offset == 0
            entry = self._next_line()
            if entry is None:
                return None
            line, raw = entry
            text = source.decode(raw, line, first=first).rstrip("\r\n")
            if text.strip():
                return line, text

    def _at_end(self) -> bool:
        source = self._opened()
        return self._end is not None and source.offset >= self._end

    def _opened(self) -> LineSource:
        if self._source is None:
            raise RuntimeError(f"{self.name} is not open: call open(ctx) first")
        return self._source

    def _error(self, line: int | None, field: str | None, message: str) -> ItemParseError:
        return parse_error(self._path or os.fspath(self.path), line, field, message)

    def _errors_at(self, line: int) -> Callable[[str | None, str], ItemParseError]:
        """How a record starting at ``line`` reports a bad field."""

        def error(field: str | None, message: str) -> ItemParseError:
            return self._error(line, field, message)

        return error

    def update(self, ctx: ExecutionContext) -> None:
        if self._source is not None:
            ctx[self.key("offset")] = self._source.offset
            ctx[self.key("line")] = self._source.line
            if self._progress is not None:
                self._progress.done = max(0, self._source.offset - self._start)
                self._progress.save(ctx)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None


# ------------------------------------------------------------------------------- output files
def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot sync a directory: nothing to do then
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _output_error(exc: OSError, path: str, doing: str) -> OutputFileError:
    reason = exc.strerror or str(exc)
    return OutputFileError(exc.errno or errno.EIO, f"cannot {doing} output file: {reason}", path)


class RestartableOutput:
    """One output file written restartably and published atomically.

    Bytes go to ``.<name>.partial`` beside the target. Each :meth:`append` is all or
    nothing (on an error such as ENOSPC the file is cut back to where it was, so the
    committed part stays intact). :meth:`checkpoint` returns the size to record at a commit;
    :meth:`open` with a recorded size truncates the partial file to it and appends from
    there. :meth:`publish` fsyncs and renames the partial file onto the target (and writes a
    ``.sha256`` sidecar if asked), then fsyncs the directory.
    """

    def __init__(self, path: str, *, fsync: bool = True, done_flag: str | None = None) -> None:
        self.path = path
        self.partial_path = _partial_name(path)
        self.fsync = fsync
        # A file that appears beside the output once it is published (``<file>.ok``), for
        # downstream systems that wait for one.
        self.done_flag = done_flag
        self.size = 0
        self._file: IO[bytes] | None = None

    def open(self, committed: int | None) -> None:
        """Start empty (``committed`` None: a first run), or resume at ``committed`` bytes."""
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            if self.done_flag is not None:
                # The flag must never stand beside an output being (re)written.
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.done_flag)
            if committed is None:
                self._file = open(self.partial_path, "wb", buffering=0)  # noqa: SIM115
                self.size = 0
                return
            if not os.path.lexists(self.partial_path) and os.path.exists(self.path):
                # Published, but the step was not recorded complete (crash in between):
                # take the file back and carry on from the checkpoint.
                os.replace(self.path, self.partial_path)
            try:
                f = open(self.partial_path, "r+b", buffering=0)  # noqa: SIM115
            except FileNotFoundError:
                raise OutputCheckpointError(
                    f"cannot resume output {self.path}: neither it nor its partial file "
                    f"{self.partial_path} exists, but the checkpoint records "
                    f"{committed} bytes written"
                ) from None
            actual = os.fstat(f.fileno()).st_size
            if actual < committed:
                f.close()
                raise OutputCheckpointError(
                    f"cannot resume output {self.path}: {self.partial_path} is {actual} bytes, "
                    f"shorter than its checkpoint ({committed} bytes); "
                    "it was changed outside batchd"
                )
            f.truncate(committed)
            f.seek(committed)
            self._file = f
            self.size = committed
        except OSError as exc:
            if isinstance(exc, OutputFileError):
                raise
            raise _output_error(exc, self.path, "open") from exc

    def append(self, data: bytes) -> None:
        f = self._opened()
        start = self.size
        view = memoryview(data)
        try:
            while view:
                written = f.write(view)
                if written is None:  # pragma: no cover - only non-blocking files
                    continue
                view = view[written:]
        except OSError as exc:
            try:  # keep the file as it was before this call
                f.truncate(start)
                f.seek(start)
            except OSError:
                pass
            raise _output_error(exc, self.path, "write") from exc
        self.size += len(data)

    def checkpoint(self) -> int:
        """The size to record with the commit (synced to disk first when ``fsync``)."""
        f = self._opened()
        if self.fsync:
            try:
                os.fsync(f.fileno())
            except OSError as exc:
                raise _output_error(exc, self.path, "sync") from exc
        return self.size

    def publish(self, *, checksum: ChecksumSpec = False) -> None:
        """Make the output appear at its final path, atomically (its checksum sidecars
        first), then its done flag."""
        f = self._opened()
        try:
            os.fsync(f.fileno())
            f.close()
            self._file = None
            for algorithm in checksum_algorithms(checksum):
                write_checksum_sidecar(self.path, self.partial_path, algorithm)
            os.replace(self.partial_path, self.path)
            _fsync_directory(os.path.dirname(self.path))
            if self.done_flag is not None:
                failpoints.failpoint(AFTER_PUBLISH_BEFORE_FLAG)
                with open(self.done_flag, "wb") as flag:
                    os.fsync(flag.fileno())
                _fsync_directory(os.path.dirname(self.done_flag))
        except OSError as exc:
            raise _output_error(exc, self.path, "publish") from exc

    def _opened(self) -> IO[bytes]:
        if self._file is None:
            raise RuntimeError(f"output {self.path} is not open: call open(ctx) first")
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FileItemWriter(ItemWriter):
    """Base of the file writers: restartable, atomic output through :class:`RestartableOutput`.

    ExecutionContext key: ``<name>.size``, the bytes of output committed. ``open(ctx)``
    resolves the path template; without a recorded size it starts a new partial file,
    with one it truncates the partial file to it and appends. ``complete(ctx)`` publishes
    the file (and with ``checksum=True`` its ``.sha256`` sidecar). Every ``write()`` is all
    or nothing: it formats the whole list before writing, and cuts the file back if writing
    fails. Output after a crash and a restart is byte for byte that of an uninterrupted run.
    """

    _runtime: tuple[str, ...] = ("_output",)

    def __init__(
        self,
        path: PathLike,
        *,
        name: str | None = None,
        checksum: ChecksumSpec = False,
        fsync: bool = True,
        done_flag: bool | str = False,
    ) -> None:
        super().__init__(name)
        self.path = path
        checksum_algorithms(checksum)  # refuse an unknown algorithm when the job is built
        self.checksum = checksum
        self.fsync = fsync
        # True: ``<file>.ok``; a string: that suffix (``".done"``).
        self.done_flag = done_flag
        self._output: RestartableOutput | None = None

    @property
    def resolved_path(self) -> str | None:
        """The final path of the output (template filled), once opened."""
        return self._output.path if self._output is not None else None

    def open(self, ctx: ExecutionContext) -> None:
        self.close()
        path = resolve_path(self.path, ctx)
        flag = self.done_flag
        output = RestartableOutput(
            path,
            fsync=self.fsync,
            done_flag=None if flag is False else path + (".ok" if flag is True else str(flag)),
        )
        committed = ctx.get(self.key("size"))
        output.open(None if committed is None else int(committed))
        self._output = output
        try:
            self._begin(ctx)
        except BaseException:
            self.close()
            raise

    def _begin(self, ctx: ExecutionContext) -> None:
        """Restore format state from ``ctx`` and write what starts a new file (a header)."""

    @abstractmethod
    def _encode(self, items: list[Any]) -> bytes:
        """The bytes of ``items``; raises before anything is written if one cannot be."""

    def _encode_text(self, text: str, encoding: str) -> bytes:
        """``text`` in ``encoding``, or ItemFormatError naming what cannot be encoded."""
        try:
            return text.encode(encoding)
        except UnicodeEncodeError as exc:
            raise ItemFormatError(
                f"cannot encode {text[exc.start : exc.end]!r} as {encoding} "
                f"for {self.resolved_path}"
            ) from None

    def _append(self, data: bytes) -> None:
        if self._output is None:
            raise RuntimeError(f"{self.name} is not open: call open(ctx) first")
        if data:
            self._output.append(data)

    @property
    def _empty(self) -> bool:
        return self._output is None or self._output.size == 0

    def write(self, items: list[Any]) -> None:
        if self._output is None:
            raise RuntimeError(f"{self.name} is not open: call open(ctx) first")
        self._append(self._encode(items))

    def update(self, ctx: ExecutionContext) -> None:
        if self._output is not None:
            ctx[self.key("size")] = self._output.checkpoint()

    def complete(self, ctx: ExecutionContext) -> None:
        if self._output is None:
            raise RuntimeError(f"{self.name} is not open: call open(ctx) first")
        self._output.publish(checksum=self.checksum)
        self._output = None

    def close(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None
