"""Errors raised by batchd. Every one subclasses :class:`BatchError`.

Every error class of batchd is defined here, whatever layer raises it, so that one import
finds them all; the modules that raise them import them from here (and the old import paths,
e.g. ``batchd.daemon.config.ConfigError``, keep working). This module imports nothing from
batchd, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class BatchError(Exception):
    """Base class of every error batchd raises on purpose."""


class NoSuchJob(BatchError):
    """The job name is neither registered nor known to the repository."""


class NoSuchJobExecution(BatchError):
    """No job execution has the given id."""


class InvalidJobParameters(BatchError):
    """Parameters are not a JSON object, or fail the job's ``params_model``."""


class JobExecutionAlreadyRunning(BatchError):
    """The job instance already has an execution that is running."""


class JobInstanceAlreadyComplete(BatchError):
    """The job instance completed (or was abandoned): it is never run again."""


class JobRestartError(BatchError):
    """The execution cannot be restarted (wrong status, or the job is not restartable)."""


class StartLimitExceeded(BatchError):
    """A step has already been started as often as its ``start_limit`` allows."""


class JobStopped(BatchError):
    """Raised by ``StepContext.check_stop()`` once a stop was requested."""


class ExecutionLost(BatchError):
    """This process no longer owns the execution: it was recovered, stopped or abandoned
    elsewhere, so every further write of this run is refused."""


class RepositoryError(BatchError):
    """The job repository cannot be opened or used (bad URL, unreachable database)."""


# --------------------------------------------------------------------------- readers and writers
# Errors of batchd.items. Each one pickles (process executors send errors back to the parent):
# keyword-style attributes travel in ``args``, which is what exceptions are rebuilt from.


class ItemParseError(BatchError, ValueError):
    """An input record cannot be read: wrong number of fields, bad JSON, undecodable bytes or
    a value that fails conversion/validation. A ``ValueError``, so ``skip(on=(ValueError,))``
    skips the record; the reader has already moved past it.

    ``path`` is the input file, ``line`` the 1-based physical line where the record starts,
    ``field`` the failing field (or None).
    """

    def __init__(
        self,
        message: str,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message, path, line, field)
        self.path = path
        self.line = line
        self.field = field

    def __str__(self) -> str:
        return str(self.args[0])


class ItemFormatError(BatchError, ValueError):
    """An item cannot be written as asked: a value does not fit its fixed-width column, a
    field is not among the output's fields, text cannot be encoded. ``field`` names it."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.field = field

    def __str__(self) -> str:
        return str(self.args[0])


class ChecksumMismatch(BatchError):
    """An input file does not match the digest in its ``.sha256`` / ``.md5`` sidecar."""

    def __init__(
        self,
        message: str,
        path: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message, path, expected, actual)
        self.path = path
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        return str(self.args[0])


class ChecksumMissing(ChecksumMismatch):
    """A reader requires a checksum sidecar (``require_checksum=``) and the input has none."""


class InputFileNotFound(BatchError, FileNotFoundError):
    """A reader's input file does not exist. ``filename`` is its path."""


class OutputFileError(BatchError, OSError):
    """Writing an output file failed (for instance ENOSPC, the disk is full). ``errno`` is the
    system's, ``filename`` the output; what was committed before is left intact."""


class CheckpointMismatch(BatchError):
    """A restarted reader or writer cannot resume from its checkpoint: the file it records a
    position in was changed outside batchd."""


class OutputCheckpointError(CheckpointMismatch):
    """A restarted writer cannot resume: its output file is missing or shorter than the size
    recorded at the last commit (it was truncated or replaced outside batchd)."""


class PathTemplateError(BatchError):
    """A path template names a job parameter that the job does not have, or is malformed."""


# --------------------------------------------------------------------------- the engine


class SkipLimitExceeded(BatchError):
    """More items were skipped than the step's skip limit allows."""


class PermanentError(BatchError):
    """Raise it (or a subclass) from a step to fail the job for good: the daemon's automatic
    retries do not restart an execution that failed with it (its exit status is
    ``FAILED_PERMANENT``). ``JobBuilder.permanent_errors(...)`` names other such errors."""


class UnguardedMainModule(BatchError):
    """Partitions on worker processes would re-import a main module that starts jobs at
    module level (no ``if __name__ == "__main__":`` around it)."""


class PartitionError(BatchError):
    """A partitioned step could not run its partitions (bad plan, unpicklable step...)."""


class PartitionFailed(BatchError):
    """A partition ended FAILED; the message is its exit message."""


class NodeConflict(BatchError):
    """Another live node holds this node's name, or (on SQLite) any other node runs."""


class FailpointHit(BatchError):
    """Raised by a failpoint whose action is ``raise``."""


# --------------------------------------------------------------------------- the daemon


class ConfigError(BatchError):
    """The configuration is bad. ``problems`` has one line per problem, each naming its key
    (``schedules[0] (eod).cron: ...``); ``path`` is the config file, if there is one."""

    def __init__(self, problems: Iterable[str], path: Path | str | None = None) -> None:
        problems = list(problems)
        super().__init__(problems, path)
        self.problems: list[str] = problems
        self.path: Path | None = Path(path) if path is not None else None

    def __str__(self) -> str:
        return "\n".join(self.problems)


class TemplateError(BatchError, ValueError):
    """A template names an unknown variable, or a value cannot be rendered."""


class NoSuchSchedule(BatchError, LookupError):
    """No schedule has the given name."""


class NoSuchCalendar(BatchError, LookupError):
    """No calendar has the given name."""


class NoSuchBackfill(BatchError):
    """No backfill of this daemon has the given id."""


class ProtocolError(BatchError):
    """A control request that cannot be carried out as sent; ``type`` is the error type to
    answer."""

    def __init__(self, type_: str, message: str, op: str | None = None) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message
        self.op = op  # the operation, when the request named a known one


# Exit statuses of ``batchd ctl``: the daemon answered with an error, or could not be reached.
EXIT_ERROR = 1
EXIT_UNAVAILABLE = 69  # sysexits.h EX_UNAVAILABLE


class ControlError(BatchError):
    """An error response of the daemon (``type`` is its error type, e.g. ``NoSuchJob``), or
    a failure to talk to it at all (``unavailable`` is then true)."""

    def __init__(self, type_: str, message: str, *, unavailable: bool = False) -> None:
        super().__init__(f"{type_}: {message}")
        self.type = type_
        self.message = message
        self.unavailable = unavailable

    @property
    def exit_status(self) -> int:
        return EXIT_UNAVAILABLE if self.unavailable else EXIT_ERROR


class WorkersUnavailable(BatchError, RuntimeError):
    """No worker process can be had (the warm process cannot start, or the pool is closed)."""

