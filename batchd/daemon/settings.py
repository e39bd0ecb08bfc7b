"""The daemon's configuration: a TOML file overridden by ``BATCHD_...`` variables.

Field names are the config keys of DESIGN §4. Validation that needs the jobs (is the job
registered, do the templates use only known variables) is done by ``check`` in
``batchd.daemon.config`` after the job modules are imported.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from batchd.daemon.addresses import parse_listen
from batchd.daemon.durations import parse_duration

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

_OCTAL_MODE = re.compile(r"0?[0-7]{3}")
_DISABLED = ("", "off", "none")


def _check_timezone(name: str | None) -> str | None:
    """An IANA time zone name; ValueError (not zoneinfo's KeyError) when it is unknown."""
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (write e.g. 'Europe/Berlin' or 'UTC')"
        ) from None
    return name


def _check_name(name: str) -> str:
    if not name.strip():
        raise ValueError("must not be empty")
    return name


def _check_positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


class Section(BaseModel):
    """Config sections refuse keys they do not know (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


class ControlSettings(Section):
    socket: Path = Path("/run/batchd/control.sock")
    mode: str = "0660"
    allowed_groups: list[str] = Field(default_factory=list)
    allowed_users: list[str] = Field(default_factory=list)

    @field_validator("mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: Any) -> Any:
        # A number would be ambiguous (TOML's 0o660 and a decimal 660 both arrive as int).
        if not isinstance(value, str) or not _OCTAL_MODE.fullmatch(value):
            raise ValueError(f'not an octal file mode string like "0660": {value!r}')
        return value


class MetricsSettings(Section):
    listen: str | None = "127.0.0.1:9464"  # "" or "off" turns the metrics listener off

    @field_validator("listen", mode="before")
    @classmethod
    def _host_port(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in _DISABLED):
            return None
        if not isinstance(value, str):
            raise ValueError(f'not "host:port": {value!r}')
        parse_listen(value)  # what the listener will bind
        return value


class WebSettings(Section):
    """The read-only web console (DESIGN §9); off unless ``listen`` is set."""

    listen: str | None = None  # e.g. "127.0.0.1:9465"; "" or "off" turns it off

    @field_validator("listen", mode="before")
    @classmethod
    def _host_port(cls, value: Any) -> Any:
        return MetricsSettings._host_port(value)  # the same addresses, checked the same way


WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_WORKING_WEEK: tuple[Weekday, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri")


class CalendarSettings(Section):
    """A business calendar (DESIGN §7): open weekdays less holidays and closing days."""

    name: str
    weekdays: list[Weekday] = Field(default_factory=lambda: list(_WORKING_WEEK))
    # Markets or countries of the ``holidays`` library: "ECB", "NYSE", "DE", "DE-BY"...
    holidays: str | list[str] = Field(default_factory=list)
    dates: list[date] = Field(default_factory=list)  # extra closing days
    file: Path | None = None  # more of them, one ISO date a line

    _name = field_validator("name")(_check_name)


class DependencySettings(Section):
    """One entry of a schedule's ``after``: a job whose execution with these parameters
    (rendered from the fire, as the schedule's own) must have COMPLETED."""

    job: str
    params: dict[str, Any] = Field(default_factory=dict)


class ScheduleSettings(Section):
    """A job fired by a cron expression or an interval, parameters from the fire time."""

    name: str
    job: str
    cron: str | None = None
    interval: Duration | None = None
    jitter: Duration | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    catch_up: Literal["none", "latest", "all"] = "none"
    misfire_grace: Duration = timedelta(hours=1)
    timezone: str | None = None  # defaults to the daemon's
    paused: bool = False
    # Fires only from start (default: always; intervals count from it, or from 1970) to end.
    start: datetime | None = None
    end: datetime | None = None
    # When the node running a fire's job dies, the node that recovers it restarts it.
    on_crash: Literal["none", "restart"] = "none"
    # Business dates (DESIGN §7): fires only on the calendar's business days; a fire before
    # day_start belongs to the day before.
    calendar: str | None = None
    day_start: time = time(0)
    after: list[DependencySettings] = Field(default_factory=list)
    wait_timeout: Duration | None = None  # after the nominal fire time
    deadline: Duration | None = None  # after the nominal fire time

    _name = field_validator("name")(_check_name)
    _timezone = field_validator("timezone")(_check_timezone)
    _positive = field_validator("wait_timeout", "deadline")(_check_positive)

    @field_validator("day_start")
    @classmethod
    def _naive_time(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("a time of day without an offset (the schedule's time zone is used)")
        return value

    @model_validator(mode="after")
    def _start_before_end(self) -> ScheduleSettings:
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self


class WatchSettings(Section):
    """A job started for each file that appears in a directory."""

    name: str
    job: str
    directory: Path
    pattern: str | None = None  # glob on the file name; default "*"
    regex: str | None = None  # or a regex with named groups usable in params
    params: dict[str, Any] = Field(default_factory=dict)
    stable_for: Duration = timedelta(seconds=1)  # size-stable fallback without close-write
    on_crash: Literal["none", "restart"] = "none"

    _name = field_validator("name")(_check_name)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"bad regex {value!r}: {error}") from None
        return value

    @model_validator(mode="after")
    def _pattern_or_regex(self) -> WatchSettings:
        if self.pattern is not None and self.regex is not None:
            raise ValueError("give pattern or regex, not both")
        return self


def _check_node_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}", name):
        raise ValueError(
            f"{name!r} is not a node name: letters, digits, '.', '_', ':' and '-', "
            "at most 200, starting with a letter or digit"
        )
    return name


class JobSettings(Section):
    """``[job.<name>]``: automatic retries of the job's FAILED executions (Airflow's
    ``retries`` and ``retry_delay``): the first ``retry_delay`` after the failure, each next
    one twice as long, at most ``retry_max_delay``."""

    retries: int = Field(default=0, ge=0, le=100)
    retry_delay: Duration = timedelta(minutes=5)
    retry_max_delay: Duration = timedelta(hours=1)


_MEMORY = re.compile(r"(\d+)\s*([KMGT]?)i?B?", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(value: Any) -> int:
    """A memory size as systemd's MemoryMax= takes it: bytes, or 512K, 200M, 4G, 1T."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _MEMORY.fullmatch(value.strip())):
        size = int(match[1]) * _MEMORY_UNITS[match[2].upper()]
    else:
        raise ValueError(f"not a memory size: {value!r} (write e.g. '512M' or '4G')")
    if size < 2**20:
        raise ValueError(f"{value!r} is under 1M: no Python process runs in that")
    return size


MemorySize = Annotated[int, BeforeValidator(parse_memory)]


class JobLimits(Section):
    """What one execution of a job may take (DESIGN §6), in a worker process."""

    timeout: Duration | None = None  # then stop asked, killed after stop_grace
    memory_max: MemorySize | None = None  # enforced by the kernel

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        return None if value is None else _check_positive(value)


class LimitSettings(JobLimits):
    """``[limits]``: the defaults; ``[limits.jobs.NAME]`` one job's, key by key over them."""

    jobs: dict[str, JobLimits] = Field(default_factory=dict)

    def of(self, job: str) -> JobLimits:
        own = self.jobs.get(job)
        if own is None:
            return JobLimits(timeout=self.timeout, memory_max=self.memory_max)
        return JobLimits(
            timeout=own.timeout if "timeout" in own.model_fields_set else self.timeout,
            memory_max=(
                own.memory_max if "memory_max" in own.model_fields_set else self.memory_max
            ),
        )


class Settings(Section):
    database_url: str = "sqlite:///batchd.db"
    # This daemon's name among the nodes sharing the repository.
    node: str = Field(default_factory=socket.gethostname)
    jobs: list[str] = Field(default_factory=list)
    # Directories put in front of sys.path before the job modules are imported, so that the
    # daemon and check-config find the operator's modules from any working directory.
    jobs_path: list[Path] = Field(default_factory=list)
    max_concurrent_jobs: int = Field(default=4, ge=1)
    timezone: str = "UTC"
    stop_grace: Duration = timedelta(seconds=60)
    heartbeat: Duration = timedelta(seconds=5)
    lease: Duration = timedelta(seconds=60)
    recover_every: Duration = timedelta(seconds=30)
    control: ControlSettings = Field(default_factory=ControlSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    schedules: list[ScheduleSettings] = Field(default_factory=list)
    watches: list[WatchSettings] = Field(default_factory=list)
    calendars: list[CalendarSettings] = Field(default_factory=list)
    job: dict[str, JobSettings] = Field(default_factory=dict)
    # DESIGN §6: "process" runs every execution in a worker process, "thread" in the
    # daemon's own threads.
    isolation: Literal["process", "thread"] = "process"
    # Per-execution logs, <log_dir>/<job>/<execution id>.log (relative: to the working
    # directory, as the default SQLite file).
    log_dir: Path = Path("logs")
    limits: LimitSettings = Field(default_factory=LimitSettings)

    _timezone = field_validator("timezone")(_check_timezone)
    _node = field_validator("node")(_check_node_name)

    @field_validator("jobs_path")
    @classmethod
    def _absolute(cls, paths: list[Path]) -> list[Path]:
        # Relative to what? The daemon's working directory is not the operator's: refuse.
        relative = [str(path) for path in paths if not path.is_absolute()]
        if relative:
            raise ValueError(f"must be absolute directories, not {', '.join(relative)}")
        return paths

    _positive = field_validator("stop_grace", "heartbeat", "lease", "recover_every")(
        _check_positive
    )


# Variables batchd reads itself that are not settings (the config file's path, the crash
# tests' failpoints, the trusted input directories of the file readers).
OTHER_VARIABLES = ("CONFIG", "FAILPOINTS", "INPUT_DIRS")


def variable_names() -> list[str]:
    """Every ``BATCHD_`` variable batchd reads, without the prefix: each setting (a table's
    keys joined by ``__``, as ``CONTROL__SOCKET``) and :data:`OTHER_VARIABLES`."""
    names = list(OTHER_VARIABLES)
    for name, field in Settings.model_fields.items():
        names.append(name.upper())
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names += [f"{name}__{key}".upper() for key in section.model_fields]
    return names


def misspelt_variables(environ: Mapping[str, str], prefix: str = "BATCHD_") -> list[str]:
    """A problem for each ``BATCHD_`` variable that is none batchd reads but looks like
    one of them (``BATCHD_MAX_CONCURENT_JOBS``): such a typo would otherwise be ignored in
    silence. Other ``BATCHD_`` variables are left alone: job modules may read their own."""
    known = variable_names()
    problems = []
    for variable in sorted(environ):
        name = variable[len(prefix) :].upper()
        if not variable.upper().startswith(prefix) or name in known:
            continue
        import difflib  # only for a variable batchd does not know: not in the daemon's memory

        close = difflib.get_close_matches(name, known, n=1, cutoff=_LOOKS_LIKE)
        if close:
            problems.append(f"{variable}: unknown variable (did you mean {prefix}{close[0]}?)")
    return problems


_LOOKS_LIKE = 0.75  # difflib's ratio from which a variable's name is taken for a typo
