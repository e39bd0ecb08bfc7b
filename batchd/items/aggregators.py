"""Built-in aggregators: what runs once after every partition of a partitioned step COMPLETED.

An aggregator's ``aggregate(step_execution, partitions)`` receives the partitions' latest
StepExecutions in partition order; ``p.partition`` is partition ``p``'s context. The engine
gives each run its own ``copy.copy`` of the aggregator, calls ``open(ctx)`` before it (with
the partitioned step's ExecutionContext, whose ``params`` are the job parameters) and
``close()`` after it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
from collections.abc import Sequence
from typing import IO

from batchd import failpoints
from batchd.errors import InputFileNotFound
from batchd.items.base import ItemStream
from batchd.items.files import (
    _READ_BLOCK,
    CHECKSUM_SIDECARS,
    PathLike,
    RestartableOutput,
    _fsync_directory,
    resolve_path,
    verify_checksums,
)
from batchd.model import ExecutionContext, StepExecution

log = logging.getLogger(__name__)

AFTER_MERGE_RENAME = failpoints.declare(
    "aggregator.after_merge_rename",
    "the merged file is published and every part is still there: a re-run merges the parts "
    "again into the same bytes",
)
DURING_PART_REMOVAL = failpoints.declare(
    "aggregator.during_part_removal",
    "the merged file is published, the removal marker written and some parts removed: a "
    "re-run sees the marker and finishes the removal instead of reporting missing parts",
)


class FileAggregator(ItemStream):
    """Concatenates the partitions' output files, in partition order, into one file that
    appears atomically: it is written to ``.<name>.partial`` beside the target, synced and
    renamed onto it, so the target is either absent (or as it was before) or complete.

    ``path`` (the target) and ``parts`` (each partition's file) are templates filled with
    the job parameters and ``partition``, the partition's context. For instance::

        FileAggregator(
            "out/report_{date}.csv",
            parts="out/report_{date}.part{partition[index]:04d}.csv",
            header_lines=1,
        )

    merges the CSV files the partitions wrote into one report, under one header.

    - ``header_lines=k``: the first ``k`` lines of the first non-empty part are kept, and
      every other part must start with the same ``k`` lines, which are dropped (a part that
      does not raises ValueError naming it). An empty part (a partition that wrote nothing)
      adds nothing.
    - A part whose last line has no line break gets one (else it would merge with the
      next part's first line).
    - ``remove_parts``: once the target is published, the parts (and their checksum
      sidecars) are removed. ``checksum``: the target gets a ``.sha256`` sidecar.
    - Parts with a ``.sha256`` / ``.md5`` sidecar are verified before they are merged.

    Re-running it is safe (a crash after publishing, before the step was recorded
    COMPLETED): while the parts are all there they are merged again; when the target exists
    and every part is gone, it does nothing, and it finishes removing the parts when the
    crash was in the middle of that (recorded by a ``.<name>.removing-parts`` marker beside
    the target for the few moments the removal takes). Otherwise a
    missing part raises :class:`batchd.errors.InputFileNotFound` naming every missing part,
    and the target is not touched.
    """

    _runtime: tuple[str, ...] = ("_ctx",)

    def __init__(
        self,
        path: PathLike,
        *,
        parts: PathLike,
        header_lines: int = 0,
        remove_parts: bool = True,
        checksum: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if header_lines < 0:
            raise ValueError(f"header_lines must be 0 or more, not {header_lines}")
        self.path = path
        self.parts = parts
        self.header_lines = header_lines
        self.remove_parts = remove_parts
        self.checksum = checksum
        self._ctx: ExecutionContext | None = None

    def open(self, ctx: ExecutionContext) -> None:
        self._ctx = ctx

    def close(self) -> None:
        self._ctx = None

    def aggregate(self, step_execution: StepExecution, partitions: Sequence[StepExecution]) -> None:
        """Merge the parts of ``partitions`` into the target and publish it."""
        if self._ctx is None:
            raise RuntimeError(f"{self.name} is not open: call open(ctx) first")
        target = resolve_path(self.path, self._ctx)
        parts = self._part_paths(self._ctx, partitions, target)
        marker = _removing_marker(target)
        missing = [part for part in parts if not os.path.lexists(part)]
        if (
            missing
            and os.path.exists(target)
            and (len(missing) == len(parts) or os.path.lexists(marker))
        ):
            # Published by an earlier run that ended before the step did.
            log.info(
                "%s: %s is already published from its parts: nothing to merge", self.name, target
            )
            if os.path.lexists(marker):  # that run stopped while removing the parts
                self._remove(parts, marker)
            return
        if missing:
            raise InputFileNotFound(
                errno.ENOENT,
                f"{self.name}: {len(missing)} of {len(parts)} part files are missing "
                f"({', '.join(missing)}); {target} was not touched",
                missing[0],
            )
        self._merge(target, parts)
        failpoints.failpoint(AFTER_MERGE_RENAME)
        if self.remove_parts:
            self._remove(parts, marker)

    def _part_paths(
        self, ctx: ExecutionContext, partitions: Sequence[StepExecution], target: str
    ) -> list[str]:
        paths: list[str] = []
        seen: dict[str, int] = {os.path.abspath(target): -1}
        for i, execution in enumerate(partitions):
            if execution.partition is None:
                raise ValueError(
                    f"{self.name}: step execution {execution.id} ({execution.step_name!r}) "
                    "has no partition context: it is not a partition"
                )
            path = resolve_path(
                self.parts, ExecutionContext(params=ctx.params, partition=execution.partition)
            )
            other = seen.setdefault(os.path.abspath(path), i)
            if other != i:
                clash = "the target" if other < 0 else f"the part of partition {other}"
                raise ValueError(
                    f"{self.name}: the part of partition {i}, {path}, is also {clash}: the "
                    f"parts template {os.fspath(self.parts)!r} must differ per partition, "
                    "e.g. with {partition[index]:04d}"
                )
            paths.append(path)
        return paths

    def _merge(self, target: str, parts: list[str]) -> None:
        output = RestartableOutput(target)
        output.open(None)
        try:
            header: bytes | None = None  # the first non-empty part's first header_lines
            last = b"\n"  # the last byte written
            for part in parts:
                verify_checksums(part)
                with open(part, "rb") as f:
                    head = _read_lines(f, self.header_lines)
                    if header is None:
                        header = head or None
                    elif head:
                        if head != header:
                            raise ValueError(
                                f"{self.name}: part {part} starts with {head!r}, not with the "
                                f"header of the parts before it, {header!r}"
                            )
                        head = b""  # written once, from the first part that has it
                    body = iter(functools.partial(f.read, _READ_BLOCK), b"")
                    for data in itertools.chain([head], body):
                        if data:
                            output.append(data)
                            last = data[-1:]
                if last != b"\n":  # else the part's last line and the next part's first merge
                    output.append(b"\n")
                    last = b"\n"
            output.publish(checksum=self.checksum)
        except BaseException:
            # Nothing half-written is left: not the target (never renamed), nor the partial.
            output.close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(output.partial_path)
            raise

    def _remove(self, parts: list[str], marker: str) -> None:
        # The marker records "published, removing the parts", so that a re-run after a
        # crash halfway through finishes the removal instead of reporting missing parts.
        with open(marker, "wb"):
            pass
        _fsync_directory(os.path.dirname(marker))
        for part in parts:
            for path in (part, *(part + suffix for suffix, _ in CHECKSUM_SIDECARS)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            failpoints.failpoint(DURING_PART_REMOVAL)
        for directory in {os.path.dirname(part) for part in parts}:
            _fsync_directory(directory)  # the removals are durable before the marker goes
        os.remove(marker)
        _fsync_directory(os.path.dirname(marker))


def _removing_marker(target: str) -> str:
    directory, base = os.path.split(target)
    return os.path.join(directory, f".{base}.removing-parts")


def _read_lines(f: IO[bytes], count: int) -> bytes:
    return b"".join(f.readline() for _ in range(count))


__all__ = ["FileAggregator"]
