"""What a watch is: its template variables, the one validation of its settings, and which
file names it wants. ``batchd check-config``, ``batchd run`` (through the config check) and
the watcher itself (on start and SIGHUP) all use :func:`watch_problems`, so a watch one of
them accepts is one the others accept."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final

from batchd.daemon.settings import WatchSettings
from batchd.daemon.templates import TemplateError, check_templates

#: Suffix of the file that says why a file was rejected (never taken as a trigger).
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


def _groups(watch: WatchSettings) -> set[str]:
    if watch.regex is None:
        return set()
    try:
        return set(re.compile(watch.regex).groupindex)
    except re.error:
        return set()  # reported by watch_problems


def watch_variables(watch: WatchSettings) -> set[str]:
    """The template variables ``watch.params`` may use: :data:`WATCH_VARIABLES` and the
    named groups of its regex."""
    return set(WATCH_VARIABLES) | _groups(watch)


def watch_problems(watch: WatchSettings) -> list[tuple[str, ValueError]]:
    """Everything wrong with a watch that its settings' own types do not catch, as (key
    within the watch, error): a bad regex or one whose group shadows a built-in variable, a
    directory that is missing or not a directory, ``stable_for`` not positive, templates
    that are malformed or use unknown variables (TemplateError)."""
    problems: list[tuple[str, ValueError]] = []
    if watch.regex is not None:
        try:
            regex = re.compile(watch.regex)
        except re.error as error:
            problems.append(("regex", ValueError(f"bad regex {watch.regex!r}: {error}")))
        else:
            shadowing = sorted(set(regex.groupindex) & set(WATCH_VARIABLES))
            if shadowing:
                problems.append(
                    (
                        "regex",
                        ValueError(
                            f"group {', '.join(shadowing)} shadows a built-in variable; "
                            "rename the group"
                        ),
                    )
                )
    if not watch.directory.exists():
        problems.append(("directory", ValueError(f"{watch.directory} does not exist")))
    elif not watch.directory.is_dir():
        problems.append(("directory", ValueError(f"{watch.directory} is not a directory")))
    if watch.stable_for.total_seconds() <= 0:
        problems.append(("stable_for", ValueError("must be longer than 0s")))
    available = sorted(watch_variables(watch))
    for name, template in watch.params.items():
        try:
            check_templates({name: template}, available)
        except TemplateError as error:
            problems.append((f"params.{name}", error))
    return problems


def validate_watch(watch: WatchSettings) -> None:
    """Raise the first of :func:`watch_problems` (TemplateError for a template, else
    ValueError), naming the watch and the key; the message lists every problem."""
    problems = watch_problems(watch)
    if problems:
        text = "; ".join(f"{key}: {error}" for key, error in problems)
        raise type(problems[0][1])(f"watch {watch.name!r}: {text}")


@dataclass
class WatchState:
    """A configured watch with what is derived from it."""

    settings: WatchSettings
    root: Path  # the directory, resolved
    regex: re.Pattern[str] | None
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, watch: WatchSettings, counts: dict[str, int] | None = None) -> WatchState:
        """The state of a valid watch (see :func:`validate_watch`)."""
        regex = re.compile(watch.regex) if watch.regex is not None else None
        return cls(watch, watch.directory.resolve(), regex, counts if counts is not None else {})

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

    def variables(
        self, name: str, dest: Path, size: int, mtime_ns: int, digest: str, tz: tzinfo
    ) -> dict[str, Any]:
        """The template variables for the file ``name``, to be found at ``dest``."""
        mtime = datetime.fromtimestamp(mtime_ns / 1e9, tz=tz)
        mtime_date: date = mtime.date()
        builtins: Mapping[str, Any] = {
            "path": str(dest),
            "name": name,
            "stem": Path(name).stem,
            "suffix": Path(name).suffix,
            "directory": str(self.root),
            "mtime": mtime,
            "mtime_date": mtime_date,
            "size": size,
            "watch": self.name,
            "sha256": digest,
        }
        assert set(builtins) == set(WATCH_VARIABLES)  # one list, checked where it is used
        return {**(self.groups(name) or {}), **builtins}


def is_text_name(name: str) -> bool:
    """Whether a file name is UTF-8 text. ``os`` decodes other bytes to lone surrogates,
    which cannot be stored, logged or passed to a job faithfully."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
