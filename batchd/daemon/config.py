"""Loading and checking the daemon's configuration.

Three stages, each reporting every problem it finds at once as one :class:`ConfigError`
whose problems each name the key they are about::

    settings = load_settings(path)        # TOML file + BATCHD_... environment -> Settings
    registry = load_jobs(settings)        # import the modules in ``jobs``
    check(settings, registry)             # jobs registered, triggers, templates, directories

:func:`load_config` does the three (and is what ``batchd run`` and ``batchd check-config``
use); with ``reload=True`` it re-imports the job modules for SIGHUP and, when the new config
is bad, leaves the job registry as it was.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from batchd.daemon.calendars import calendar_problems
from batchd.daemon.scheduler import SCHEDULE_VARIABLES, validate_schedule
from batchd.daemon.settings import ScheduleSettings, Settings, WatchSettings, misspelt_variables
from batchd.daemon.templates import TemplateError, check_templates
from batchd.daemon.watch_rules import WATCH_VARIABLES, watch_problems
from batchd.engine import JobRegistry
from batchd.errors import ConfigError as ConfigError
from batchd.errors import RepositoryError
from batchd.repository import parse_database_url
from batchd.shortcuts import default_registry

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "EX_CONFIG",
    "SCHEDULE_VARIABLES",
    "WATCH_VARIABLES",
    "ConfigError",
    "check",
    "config_path",
    "load_config",
    "load_jobs",
    "load_settings",
]

EX_CONFIG = 78  # sysexits.h EX_CONFIG: the exit status of a bad configuration
ENV_PREFIX = "BATCHD_"
CONFIG_ENV = "BATCHD_CONFIG"  # the config file's path; not itself a setting


# --------------------------------------------------------------------------- settings


def config_path(path: Path | str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read: ``path``, else ``$BATCHD_CONFIG``, else None (no file)."""
    if path is not None and str(path) != "":
        return Path(path)
    from_env = (os.environ if env is None else env).get(CONFIG_ENV)
    return Path(from_env) if from_env else None


def load_settings(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file at ``path`` (else ``$BATCHD_CONFIG``; with neither, defaults) and
    apply ``BATCHD_<KEY>`` variables from ``env`` (default ``os.environ``) over it, nested
    keys joined by ``__`` (``BATCHD_CONTROL__SOCKET``); list and table values are JSON
    (``BATCHD_JOBS='["jobs.end_of_day"]'``). Raises ConfigError naming every bad key."""
    environ: Mapping[str, str] = os.environ if env is None else env
    file = config_path(path, environ)
    data = _read_toml(file) if file is not None else {}
    # Keys such as ``_env_file`` would be taken as options of BaseSettings.__init__.
    reserved = [f"{key}: unknown key" for key in data if key.startswith("_")]
    if reserved:
        raise ConfigError(reserved, file)
    typos = misspelt_variables(environ, ENV_PREFIX)  # named like the file's unknown keys
    token = _ENVIRON.set(environ)
    try:
        loaded = _FileAndEnvironment(**data)
    except ValidationError as error:
        raise ConfigError(typos + _validation_problems(error, data), file) from None
    except SettingsError as error:
        raise ConfigError([*typos, _settings_error_problem(error)], file) from None
    finally:
        _ENVIRON.reset(token)
    if typos:
        raise ConfigError(typos, file)
    # Hand out a plain Settings: it compares equal to Settings built elsewhere (on reload).
    return Settings.model_construct(
        _fields_set=set(loaded.model_fields_set),
        **{name: getattr(loaded, name) for name in Settings.model_fields},
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"], path) from None
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: not UTF-8 text: {error}"], path) from None
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror or error}"], path) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:  # its message names the line and column
        raise ConfigError([f"{path}: TOML syntax error: {error}"], path) from None


# The environment of the load_settings call in progress (a parameter, not os.environ, so
# tests and callers can pass their own mapping).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("batchd_config_environ", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """BATCHD_... variables from the mapping given to load_settings."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _ENVIRON.get()
        if environ is None:
            return super()._load_env_vars()
        if self.case_sensitive:
            return dict(environ)
        return {key.lower(): value for key, value in environ.items()}


class _FileAndEnvironment(BaseSettings, Settings):
    """Settings from the file's values (init kwargs) overridden by the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First source wins: the environment beats the file. Only declared fields are read,
        # so BATCHD_CONFIG (and other BATCHD_ variables) are not settings. No .env files.
        return _MappingEnvSource(settings_cls), init_settings


def _environment_values() -> dict[str, Any]:
    try:
        return _MappingEnvSource(_FileAndEnvironment)()
    except SettingsError:
        return {}


def _validation_problems(error: ValidationError, file_data: Mapping[str, Any]) -> list[str]:
    env_data = _environment_values()
    merged = _deep_merge(file_data, env_data)
    problems = []
    for detail in error.errors():
        loc = detail["loc"]
        kind = detail["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "missing (required)"
        else:
            message = re.sub(r"^(Value|Assertion) error, ", "", detail["msg"])
            value = detail.get("input")
            if kind not in ("value_error", "assertion_error") and not isinstance(
                value, dict | list
            ):
                message += f" (got {value!r})"
        variable = _env_variable(loc, env_data)
        if variable:
            message += f" (from {variable})"
        problems.append(f"{_key(loc, merged)}: {message}" if loc else message)
    return problems


def _key(loc: Sequence[str | int], data: Any) -> str:
    """``schedules[0] (eod).cron`` for ``("schedules", 0, "cron")``."""
    text = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                text += f" ({node['name']})"
        else:
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return text


def _env_variable(loc: Sequence[str | int], env_data: Mapping[str, Any]) -> str | None:
    """The BATCHD_ variable a bad value came from, if it came from the environment."""
    names: list[str] = []
    node: Any = env_data
    for part in loc:
        if isinstance(part, str) and isinstance(node, dict) and part in node:
            names.append(part)
            node = node[part]
        elif isinstance(part, int) and isinstance(node, list) and names:
            break  # a list given as JSON in one variable
        else:
            return None
    return ENV_PREFIX + "__".join(names).upper() if names else None


def _settings_error_problem(error: SettingsError) -> str:
    match = re.search(r'field "(\w+)"', str(error))
    if match is None:
        return str(error)
    field = match.group(1)
    return f"{field}: {ENV_PREFIX}{field.upper()} is not valid JSON (lists and tables must be)"


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------- jobs


def load_jobs(settings: Settings, *, reload: bool = False) -> JobRegistry:
    """Import each module in ``settings.jobs`` and return the registry they register into
    (``batchd.shortcuts.default_registry``, through ``batchd.register(job)``).

    With ``reload=True`` (SIGHUP), modules imported before are executed again
    (``importlib.reload``: only the named module, not what it imports), so changed job code
    and new jobs are picked up. Any exception raised by a module is a problem naming it; on
    failure the registry is put back as it was. The working directory is put at the end of
    ``sys.path`` (as ``python -m`` would put it first) so that a project's ``jobs`` package
    imports under the ``batchd`` console script too. ``BATCHD_DATABASE_URL`` is set to
    ``settings.database_url`` when unset, for job modules that read it at import.
    """
    with _rolled_back_on_error(settings.jobs):
        problems = _import_job_modules(settings, reload=reload)
        if problems:
            raise ConfigError(problems)
    return default_registry


def _import_job_modules(settings: Settings, *, reload: bool) -> list[str]:
    os.environ.setdefault("BATCHD_DATABASE_URL", settings.database_url)
    for directory in reversed(settings.jobs_path):  # in front, in the order given
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    importlib.invalidate_caches()  # modules written since the last import must be found
    problems = []
    for name in settings.jobs:
        try:
            module = sys.modules.get(name)
            if reload and module is not None:
                importlib.reload(module)
            else:
                importlib.import_module(name)
        except (Exception, SystemExit) as error:
            problems.append(f"jobs: cannot import module {name!r}: {_describe(error)}")
    return problems


def _describe(error: BaseException) -> str:
    if isinstance(error, ImportError):
        return str(error)
    return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def _rolled_back_on_error(modules: Iterable[str]) -> Iterator[None]:
    """If the block raises, put the default registry back as it was (a bad reload changes
    nothing) and forget the job modules it imported for the first time, so that importing
    them again runs them again and registers their jobs."""
    before = default_registry.jobs()
    fresh = [name for name in modules if name not in sys.modules]
    try:
        yield
    except BaseException:
        kept = {job.name for job in before}
        for name in default_registry.names():
            if name not in kept:
                default_registry.unregister(name)
        for job in before:
            default_registry.register(job)
        for name in fresh:
            sys.modules.pop(name, None)
        raise


# --------------------------------------------------------------------------- check


def check(settings: Settings, registry: JobRegistry) -> None:
    """Raise one ConfigError with every problem that needs more than the settings' own
    values: jobs not registered, schedule triggers that cannot be built, duplicate names,
    templates using unknown variables, watch directories that are missing, the database
    URL, lease against heartbeat."""
    problems: list[str] = []
    try:
        parse_database_url(settings.database_url)
    except RepositoryError as error:
        problems.append(f"database_url: {error}")
    if settings.lease < 3 * settings.heartbeat:
        problems.append(
            f"lease: {_seconds(settings.lease)} is less than three heartbeats "
            f"(heartbeat = {_seconds(settings.heartbeat)})"
        )
    problems += _duplicates("schedules", [s.name for s in settings.schedules])
    problems += _duplicates("watches", [w.name for w in settings.watches])
    problems += _duplicates("calendars", [c.name for c in settings.calendars])
    for index, calendar in enumerate(settings.calendars):
        key = f"calendars[{index}] ({calendar.name})"
        problems += [f"{key}.{field}: {error}" for field, error in calendar_problems(calendar)]
    for index, schedule in enumerate(settings.schedules):
        problems += _check_schedule(
            f"schedules[{index}] ({schedule.name})", schedule, settings, registry
        )
    for index, watch in enumerate(settings.watches):
        problems += _check_watch(f"watches[{index}] ({watch.name})", watch, registry)
    problems += [
        f"job.{name}: no job {name!r} is registered"
        for name in settings.job
        if name not in registry
    ]
    if problems:
        raise ConfigError(problems)


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"


def _duplicates(section: str, names: list[str]) -> list[str]:
    first: dict[str, int] = {}
    problems = []
    for index, name in enumerate(names):
        if name in first:
            problems.append(
                f"{section}[{index}] ({name}).name: duplicate name {name!r} "
                f"(also {section}[{first[name]}])"
            )
        else:
            first[name] = index
    return problems


def _check_job(key: str, job: str, registry: JobRegistry) -> list[str]:
    if job in registry:
        return []
    known = ", ".join(registry.names()) or "none"
    return [f"{key}.job: no job named {job!r} is registered (registered: {known})"]


def _check_params(
    key: str, params: Mapping[str, Any], available: Iterable[str], *, business_days: bool = False
) -> list[str]:
    problems = []
    names = sorted(available)
    for name, template in params.items():
        try:
            check_templates({name: template}, names, business_days=business_days)
        except TemplateError as error:
            problems.append(f"{key}.params.{name}: {error}")
    return problems


# Schedule fields a trigger error may be about, to name the key.
_TRIGGER_FIELDS = ("cron", "interval", "jitter", "timezone", "misfire_grace")


def _check_schedule(
    key: str, schedule: ScheduleSettings, settings: Settings, registry: JobRegistry
) -> list[str]:
    problems = _check_job(key, schedule.job, registry)
    if (schedule.cron is None) == (schedule.interval is None):
        problems.append(f"{key}: give exactly one of cron or interval")
    else:
        try:
            validate_schedule(schedule, settings.timezone)
        except Exception as error:  # whatever the trigger library raises is a config problem
            message = str(error) or type(error).__name__
            field = next((f for f in _TRIGGER_FIELDS if f in message.lower()), None)
            problems.append(f"{key}.{field}: {message}" if field else f"{key}: {message}")
    has_calendar = schedule.calendar is not None
    if has_calendar and schedule.calendar not in {c.name for c in settings.calendars}:
        known = ", ".join(c.name for c in settings.calendars) or "none"
        problems.append(
            f"{key}.calendar: no calendar named {schedule.calendar!r} (calendars: {known})"
        )
    problems += _check_params(key, schedule.params, SCHEDULE_VARIABLES, business_days=has_calendar)
    for index, after in enumerate(schedule.after):
        problems += _check_job(f"{key}.after[{index}]", after.job, registry)
        problems += _check_params(
            f"{key}.after[{index}]", after.params, SCHEDULE_VARIABLES, business_days=has_calendar
        )
    if schedule.wait_timeout is not None and not schedule.after:
        problems.append(f"{key}.wait_timeout: the schedule waits for nothing (no after)")
    return problems


def _check_watch(key: str, watch: WatchSettings, registry: JobRegistry) -> list[str]:
    # The watcher refuses exactly what watch_problems finds: what passes here runs.
    problems = _check_job(key, watch.job, registry)
    return problems + [f"{key}.{field}: {error}" for field, error in watch_problems(watch)]


# --------------------------------------------------------------------------- all together


def load_config(
    path: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    reload: bool = False,
) -> tuple[Settings, JobRegistry]:
    """Load the settings, import the jobs and check them: the daemon's whole config. Raises
    one ConfigError with every problem; on failure the job registry is left as it was."""
    file = config_path(path, env)
    settings = load_settings(file, env)
    with _rolled_back_on_error(settings.jobs):
        problems = _import_job_modules(settings, reload=reload)
        try:
            check(settings, default_registry)  # what did register, before any rollback
        except ConfigError as error:
            problems += error.problems
        if problems:
            raise ConfigError(problems, file)
    return settings, default_registry
