"""Path templates: file paths filled from the job parameters, and kept where they belong.

Parameters come from people and programs that may not write anywhere they like: ``batchd ctl
start``, the content of a ``.json`` trigger file (anyone who may write to a spool directory),
the groups of a file name. So a rendered path must stay under its template's *fixed leading
directory*: the part before the first parameter, up to its last ``/`` (the working directory
when that is empty). ``"out/r_{region}.csv"`` stays in ``out/``; ``"{file}"`` in the working
directory. A parameter that leads elsewhere (``..``, an absolute path, a NUL) is refused with
:class:`InvalidJobParameters` naming it, before anything is read or written.

A job opts out for the parameters it trusts with :func:`trusted_path`; a trusted parameter at
the start of a template moves the fixed directory to where it points. Readers may also follow
a parameter into an *input directory* (:func:`allow_input_directory`): the daemon declares
each watch's directory, so a watch's ``file = "{path}"`` reaches its file, and a trigger file
naming ``/etc/shadow`` does not.
"""

from __future__ import annotations

import os
import re
import string
import threading
from collections.abc import Collection
from typing import Any

from batchd.errors import InvalidJobParameters, PathTemplateError
from batchd.items.base import params_dict
from batchd.model import ExecutionContext

PathLike = str | os.PathLike[str]

# The input directories, in the environment so that partitions run in worker processes (which
# are spawned, and inherit it) see the same ones as the process that declared them.
INPUT_DIRECTORIES_VARIABLE = "BATCHD_INPUT_DIRS"
_input_lock = threading.Lock()

# Partition contexts come from the job's own partitioner, not from whoever started it.
_ALWAYS_TRUSTED = frozenset({"partition"})
_FORMATTER = string.Formatter()
_ROOT_NAME = re.compile(r"[^.\[]*")


class PathTemplate(os.PathLike[str]):
    """A path template and the parameters its job trusts to lead anywhere; make one with
    :func:`trusted_path`. Wherever a path is accepted, so is this."""

    def __init__(self, template: PathLike, trusted: Collection[str]) -> None:
        self.template = os.fspath(template)
        self.trusted = frozenset(trusted)

    def __fspath__(self) -> str:
        return self.template

    def __repr__(self) -> str:
        return f"trusted_path({self.template!r}, {', '.join(map(repr, sorted(self.trusted)))})"


def trusted_path(template: PathLike, *params: str) -> PathTemplate:
    """``template`` with ``params`` trusted: their values may take the path anywhere, e.g.
    ``CsvItemReader(trusted_path("{data_dir}/tx_{date:%Y%m%d}.csv", "data_dir"))`` for a
    ``data_dir`` that only the schedule in the daemon's config sets."""
    if not params:
        raise ValueError("trusted_path() needs the names of the parameters it trusts")
    return PathTemplate(template, params)


def allow_input_directory(directory: PathLike) -> None:
    """Let readers follow a parameter to a file under ``directory`` (wherever their
    template's fixed directory is). The daemon calls this for the directory of every watch."""
    resolved = os.path.realpath(directory)
    with _input_lock:
        known = input_directories()
        if resolved not in known:
            os.environ[INPUT_DIRECTORIES_VARIABLE] = os.pathsep.join([*known, resolved])


def input_directories() -> list[str]:
    """The directories :func:`allow_input_directory` declared (in this process or a parent)."""
    return [d for d in os.environ.get(INPUT_DIRECTORIES_VARIABLE, "").split(os.pathsep) if d]


def resolve_path(path: PathLike, ctx: ExecutionContext, *, reading: bool = False) -> str:
    """``path`` with its template filled: when it contains ``{``, as ``str.format(**params)``
    with the job parameters (typed values, so ``{date:%Y%m%d}`` works on a ``date``) and
    ``partition`` (the partition's context, ``{partition[index]}``). Double a literal brace.

    Raises :class:`InvalidJobParameters` when an untrusted parameter takes the path out of
    the template's fixed leading directory (for ``reading``, unless into an input directory),
    :class:`PathTemplateError` when the template cannot be filled."""
    text = os.fspath(path)
    if "{" not in text:
        return text
    values = params_dict(ctx.params)
    values.setdefault("partition", ctx.partition or {})
    pieces = _render(text, values)
    trusted = _ALWAYS_TRUSTED | (path.trusted if isinstance(path, PathTemplate) else frozenset())
    rendered = "".join(piece for piece, _ in pieces)
    _confine(text, pieces, rendered, trusted, reading=reading)
    return rendered


def _render(text: str, values: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The template filled piece by piece: (text, the parameter it came from or None)."""
    pieces: list[tuple[str, str | None]] = []
    try:
        for literal, field, spec, conversion in _FORMATTER.parse(text):
            if literal:
                pieces.append((literal, None))
            if field is None:
                continue
            value, _ = _FORMATTER.get_field(field, (), values)
            value = _FORMATTER.convert_field(value, conversion)
            spec = _FORMATTER.vformat(spec, (), values) if spec and "{" in spec else spec or ""
            root = _ROOT_NAME.match(field)
            pieces.append((_FORMATTER.format_field(value, spec), root.group() if root else field))
    except KeyError as exc:
        raise PathTemplateError(
            f"path template {text!r} needs the job parameter {exc.args[0]!r}, "
            "which this job execution does not have"
        ) from None
    except (ValueError, IndexError, AttributeError, TypeError) as exc:
        raise PathTemplateError(
            f"cannot fill path template {text!r} from the job parameters: {exc} "
            "(a date format such as {date:%Y%m%d} needs the parameter typed as a date "
            "by the job's params_model)"
        ) from None
    return pieces


def _confine(
    text: str,
    pieces: list[tuple[str, str | None]],
    rendered: str,
    trusted: frozenset[str],
    *,
    reading: bool,
) -> None:
    untrusted = [i for i, (_, name) in enumerate(pieces) if name and name not in trusted]
    if not untrusted:
        return
    for piece, name in pieces:
        if "\0" in piece:
            raise InvalidJobParameters(
                f"parameter {name!r} puts a NUL character into the path template {text!r}"
            )
    fixed = "".join(piece for piece, _ in pieces[: untrusted[0]])
    base = fixed[: fixed.rfind("/") + 1]
    if _inside(os.path.abspath(rendered), os.path.abspath(base or os.curdir)):
        return
    if reading and any(_inside(os.path.realpath(rendered), d) for d in input_directories()):
        return
    # Name the parameter that leaves: one that is absolute or climbs, else every untrusted one.
    names = [
        name
        for piece, name in (pieces[i] for i in untrusted)
        if piece.startswith("/") or ".." in piece.split("/")
    ] or [pieces[i][1] for i in untrusted]
    values = ", ".join(f"{name} = {piece!r}" for piece, name in pieces if name in names)
    raise InvalidJobParameters(
        f"parameter {' and '.join(repr(n) for n in dict.fromkeys(names))} ({values}) takes "
        f"the path template {text!r} out of {base or 'the working directory'} (to {rendered}); "
        "a job that trusts a parameter to point anywhere says so with trusted_path()"
    )


def _inside(path: str, directory: str) -> bool:
    """Whether ``path`` names something strictly under ``directory`` (both absolute)."""
    return path != directory and os.path.commonpath([path, directory]) == directory
