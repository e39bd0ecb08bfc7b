"""Built-in partitioners: how a partitioned step splits its input.

A partitioner's ``partition(n, params)`` returns one dict per partition (JSON-serialisable,
each with ``"index"``, 0-based); the reader and writer copies of partition ``i`` find dict
``i`` in ``ctx.partition``, and path templates can use it (``"{partition[index]:04d}"``).
``params`` are the job parameters (a dict or the job's ``params_model`` instance).
"""

from __future__ import annotations

import codecs
import glob
import itertools
import os
from typing import Any

from sqlalchemy import MetaData, Table, func, select, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import NoSuchTableError

from batchd.items.files import CHECKSUM_SIDECARS, LineSource, PathLike, resolve_path
from batchd.items.sql_items import _SqlStream
from batchd.model import ExecutionContext


def _check_count(owner: object, n: int) -> None:
    if n < 1:
        raise ValueError(
            f"{type(owner).__name__}: the number of partitions must be at least 1, not {n}"
        )


class SqlKeyRangePartitioner:
    """Splits the keys of a table's integer column into contiguous ranges, for
    :class:`batchd.items.SqlItemReader` (which reads ``start <= key <= end`` of its partition).

    ``partition(n, params)`` reads ``MIN(column)`` and ``MAX(column)`` (of the rows matching
    ``where``, a SQL condition such as ``"status = 'new'"``, when given) and returns at most
    ``n`` ranges ``{"index": i, "start": a, "end": b}`` of near-equal width (the widths
    differ by at most one key) that cover ``[min, max]`` exactly, without overlap: fewer
    than ``n`` when there are fewer than ``n`` keys in ``[min, max]``. The ranges are equal
    in key values, not in rows: gaps in the keys give partitions of unequal row counts.
    ``where`` only narrows the bounds; the reader's query must filter its rows itself.

    An empty table (or no row matching ``where``) gives one empty partition,
    ``[{"index": 0, "start": 1, "end": 0}]``, in which the reader reads nothing.

    ``url_or_engine`` is a database URL or an Engine, handled as by SqlItemReader: no
    connection is held between calls, and a pickled copy (sent to a worker process) carries
    the URL, from which the worker makes its own Engine.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        table: str,
        column: str,
        *,
        where: str | None = None,
    ) -> None:
        # SqlItemReader's handling of a URL or an Engine, pickling included.
        self._database = _SqlStream(url_or_engine, type(self).__name__)
        self.table = table
        self.column = column
        self.where = where

    @property
    def url(self) -> str:
        """The database URL (of the Engine, when one was given)."""
        return self._database.url

    def __repr__(self) -> str:  # the engine's errors name the partitioner
        url = make_url(self.url).render_as_string(hide_password=True)
        where = f", where={self.where!r}" if self.where else ""
        return f"SqlKeyRangePartitioner({url!r}, {self.table!r}, {self.column!r}{where})"

    def partition(self, n: int, params: Any = None) -> list[dict[str, Any]]:
        _check_count(self, n)
        low, high = self._bounds()
        if low is None or high is None:
            return [{"index": 0, "start": 1, "end": 0}]
        keys = high - low + 1
        count = min(n, keys)
        return [
            {"index": i, "start": low + i * keys // count, "end": low + (i + 1) * keys // count - 1}
            for i in range(count)
        ]

    def _bounds(self) -> tuple[int | None, int | None]:
        engine = self._database._connect_engine()
        with engine.connect() as connection:
            try:
                table = Table(self.table, MetaData(), autoload_with=connection)
            except NoSuchTableError:
                raise ValueError(
                    f"{type(self).__name__}: no table {self.table!r} in "
                    f"{engine.url.render_as_string(hide_password=True)}"
                ) from None
            column = table.c.get(self.column)
            if column is None:
                raise ValueError(
                    f"{type(self).__name__}: table {self.table!r} has no column {self.column!r} "
                    f"(columns: {', '.join(table.c.keys())})"
                )
            try:
                python_type: type[Any] = column.type.python_type
            except NotImplementedError:
                python_type = object
            # object: a type SQLAlchemy does not know (such as an SQLite column declared
            # without one), so only the values below can tell.
            if python_type is not object and (
                python_type is bool or not issubclass(python_type, int)
            ):
                raise self._not_integers(f"its type is {column.type}")
            query = select(func.min(column), func.max(column)).select_from(table)
            if self.where:
                query = query.where(text(self.where))
            low, high = connection.execute(query).one()
        # SQLite stores any value in any column: the values themselves must be integers.
        for value in (low, high):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise self._not_integers(f"it holds {value!r}")
        return low, high

    def _not_integers(self, found: str) -> ValueError:
        return ValueError(
            f"{type(self).__name__}: column {self.column!r} of table {self.table!r} must hold "
            f"integer keys to be split into ranges, but {found}"
        )


def _line_start(source: LineSource, offset: int) -> int:
    """The offset of the first line that starts at or after ``offset`` (> 0): the byte
    before it is read to tell whether ``offset`` is inside a line, without reading the file
    up to there (LineSource.align counts the lines on the way, which partitioning does not
    need)."""
    source.seek(offset - 1, 0)
    return offset - 1 + len(source.readline())


class FileLinePartitioner:
    """Splits a file into byte ranges of whole lines, for the line-based file readers
    (:class:`batchd.items.CsvItemReader`, :class:`batchd.items.JsonLinesItemReader`, ...).

    ``partition(n, params)`` returns at most ``n`` ranges
    ``{"index": i, "start_offset": a, "end_offset": b}`` of near-equal size: a split point
    inside a line moves forward to the start of the next line, and ranges left empty are
    dropped, so a file of fewer than ``n`` lines gives fewer partitions. Partition 0 starts
    at offset 0 and the last ends at the file size; an empty file gives one empty range.
    The readers opened with the ranges read every record exactly once (a CSV reader reads
    its header from offset 0 in every partition). Records must not span lines (no line
    breaks inside quoted CSV fields).

    ``path`` may be a template filled from the job parameters. A missing file raises
    :class:`batchd.errors.InputFileNotFound`, as the readers do. ``encoding`` must encode
    a line break as the byte ``\\n`` (UTF-8, Latin-1, cp1252, ...; not UTF-16).
    """

    def __init__(self, path: PathLike, *, encoding: str = "utf-8") -> None:
        # Lines are split on the byte "\n", as LineSource splits them; the first encode()
        # call carries any byte-order mark (utf-8-sig), so the second shows the line break.
        encoder = codecs.getincrementalencoder(encoding)()
        encoder.encode("a")
        if encoder.encode("\n") != b"\n":
            raise ValueError(
                f"FileLinePartitioner: encoding {encoding!r} does not write a line break as "
                "the byte \\n, so its lines cannot be found by byte offset"
            )
        self.path = path
        self.encoding = encoding

    def __repr__(self) -> str:
        return f"FileLinePartitioner({os.fspath(self.path)!r})"

    def partition(self, n: int, params: Any = None) -> list[dict[str, Any]]:
        _check_count(self, n)
        path = resolve_path(self.path, ExecutionContext(params=params), reading=True)
        source = LineSource(path, self.encoding)  # raises InputFileNotFound as the readers do
        try:
            size = os.path.getsize(path)
            count = max(1, min(n, size))  # a line has at least one byte
            cuts = {_line_start(source, i * size // count) for i in range(1, count)}
        finally:
            source.close()
        bounds = [0, *sorted(cuts - {0, size}), size]
        return [
            {"index": i, "start_offset": a, "end_offset": b}
            for i, (a, b) in enumerate(itertools.pairwise(bounds))
        ]


class FileGlobPartitioner:
    """One partition per file matching a glob pattern: ``{"index": i, "path": p}``.

    ``p`` is the file's absolute path; files are in order of path, and only regular files
    count. ``pattern`` (relative to the current directory, ``**`` matching any depth) may
    be a template filled from the job parameters: ``"in/{date:%Y%m%d}/*.csv"``. Read each
    with a reader whose path is ``"{partition[path]}"``. Checksum sidecars
    (``<file>.sha256`` / ``<file>.md5``) of matched files are not partitions of their own:
    the readers verify them. ``n`` is ignored: there is one partition per file, and none
    when nothing matches (the engine reports that as the step's error).
    """

    def __init__(self, pattern: PathLike) -> None:
        self.pattern = pattern

    def __repr__(self) -> str:
        return f"FileGlobPartitioner({os.fspath(self.pattern)!r})"

    def partition(self, n: int, params: Any = None) -> list[dict[str, Any]]:
        pattern = resolve_path(self.pattern, ExecutionContext(params=params), reading=True)
        files = {
            os.path.abspath(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)
        }
        sidecars = {f + suffix for f in files for suffix, _ in CHECKSUM_SIDECARS}
        return [{"index": i, "path": p} for i, p in enumerate(sorted(files - sidecars))]


__all__ = ["FileGlobPartitioner", "FileLinePartitioner", "SqlKeyRangePartitioner"]
