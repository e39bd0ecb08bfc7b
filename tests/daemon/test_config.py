"""The daemon's config: TOML + BATCHD_ environment, job modules, checks, `batchd check-config`.

Real files in tmp_path; job modules are real modules written there and imported.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from batchd.daemon.config import (
    EX_CONFIG,
    ConfigError,
    check,
    load_config,
    load_jobs,
    load_settings,
)
from batchd.daemon.settings import Settings
from batchd.shortcuts import default_registry
from tests.daemon.toml_text import toml

REPO = Path(__file__).resolve().parents[2]
_module_counter = itertools.count(1)

JOBS_MODULE = """\
import batchd
from batchd import JobBuilder, StepBuilder


def _noop(ctx):
    pass


for _name in {names!r}:
    batchd.register(JobBuilder(_name).step(StepBuilder("only").tasklet(_noop).build()).build())
{extra}
"""

MakeJobs = Callable[..., str]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the caller's BATCHD_ variables out of the configs under test (what a config
    load exports is undone after every test: tests/conftest.py)."""
    for name in list(os.environ):
        if name.startswith("BATCHD_"):
            monkeypatch.delenv(name)
    # Rewritten modules must be read from source on reload (no stale .pyc of the same second).
    monkeypatch.setattr(sys, "dont_write_bytecode", True)


@pytest.fixture
def make_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeJobs]:
    """Write a jobs module registering ``names`` into the default registry; -> module name.
    ``module=`` rewrites an earlier one; ``extra`` is code appended to the module."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []
    registered: set[str] = set()

    def make(*names: str, extra: str = "", module: str | None = None) -> str:
        module = module or f"cfg_jobs_{os.getpid()}_{next(_module_counter)}"
        (tmp_path / f"{module}.py").write_text(JOBS_MODULE.format(names=names, extra=extra))
        written.append(module)
        registered.update(names)
        return module

    yield make
    for name in registered:
        default_registry.unregister(name)
    for module in written:
        sys.modules.pop(module, None)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def config_file(path: Path, **keys: object) -> Path:
    """A config file of these top-level keys; ``schedules=[{...}]`` is an array of tables."""
    return write(path, "".join(f"{key} = {toml(value)}\n" for key, value in keys.items()))


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env or {})
    assert caught.value.path == path
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def good_config(tmp_path: Path, module: str) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    eod = dict(name="eod", job="cfg_eod", cron="30 1 * * *", catch_up="all", misfire_grace="1h")
    eod["params"] = dict(date="{fire_date-1d}", stamp="{fire_time:%H%M}", by="{schedule}")
    payments = dict(name="payments", job="cfg_import", directory=inbox)
    payments["regex"] = r"payments_(?P<day>\d{8})\.csv"
    payments["params"] = dict(file="{path}", day="{day}", seen="{mtime_date}")
    return config_file(
        tmp_path / "batchd.toml",
        database_url=f"sqlite:///{tmp_path / 'batchd.db'}",
        jobs=[module],
        max_concurrent_jobs=2,
        timezone="Europe/Berlin",
        stop_grace="30s",
        control=dict(socket=tmp_path / "control.sock", mode="0600"),
        metrics=dict(listen="127.0.0.1:9464"),
        schedules=[eod],
        watches=[payments],
    )


# --------------------------------------------------------------------------- good configs


def test_a_valid_config_loads(tmp_path: Path, make_jobs: MakeJobs) -> None:
    module = make_jobs("cfg_eod", "cfg_import")
    settings, registry = load_config(good_config(tmp_path, module), {})
    assert type(settings) is Settings
    assert registry is default_registry
    assert {"cfg_eod", "cfg_import"} <= set(registry.names())
    assert settings.max_concurrent_jobs == 2
    assert settings.stop_grace == timedelta(seconds=30)
    assert settings.control.mode == "0600"
    assert settings.schedules[0].name == "eod"
    assert settings.schedules[0].catch_up == "all"
    assert settings.schedules[0].misfire_grace == timedelta(hours=1)
    assert settings.watches[0].directory == tmp_path / "inbox"
    assert settings.heartbeat == timedelta(seconds=5)  # defaults fill what the file omits


def test_no_file_means_defaults_and_environment() -> None:
    settings = load_settings(None, {"BATCHD_MAX_CONCURRENT_JOBS": "3"})
    assert settings.max_concurrent_jobs == 3
    assert settings.schedules == []


# --------------------------------------------------------------------------- environment


def test_environment_beats_the_file(tmp_path: Path, make_jobs: MakeJobs) -> None:
    module = make_jobs("cfg_eod", "cfg_import")
    path = good_config(tmp_path, module)
    env = {
        "BATCHD_MAX_CONCURRENT_JOBS": "8",
        "BATCHD_DATABASE_URL": f"sqlite:///{tmp_path / 'other.db'}",
        "BATCHD_CONTROL__SOCKET": "/tmp/x.sock",
        "BATCHD_METRICS__LISTEN": "",
        "BATCHD_STOP_GRACE": "2m",
        "BATCHD_CONFIG": "/not/a/setting.toml",  # the file's path, not a setting
        "BATCHD_SOMETHING_ELSE": "ignored",
    }
    settings = load_settings(path, env)
    assert settings.max_concurrent_jobs == 8
    assert settings.database_url == f"sqlite:///{tmp_path / 'other.db'}"
    assert settings.control.socket == Path("/tmp/x.sock")
    assert settings.control.mode == "0600"  # the rest of [control] still comes from the file
    assert settings.metrics.listen is None  # "" turns metrics off
    assert settings.stop_grace == timedelta(minutes=2)
    assert settings.schedules[0].name == "eod"


def test_environment_from_os_environ_and_batchd_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "b.toml", 'max_concurrent_jobs = 2\ntimezone = "UTC"\n')
    monkeypatch.setenv("BATCHD_CONFIG", str(path))
    monkeypatch.setenv("BATCHD_TIMEZONE", "Europe/Berlin")
    monkeypatch.setenv("BATCHD_JOBS", '["a.b", "c"]')
    settings = load_settings(None)
    assert settings.max_concurrent_jobs == 2  # from the file BATCHD_CONFIG names
    assert settings.timezone == "Europe/Berlin"
    assert settings.jobs == ["a.b", "c"]


def test_bad_environment_values_name_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path / "b.toml", "max_concurrent_jobs = 2\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {"BATCHD_MAX_CONCURRENT_JOBS": "many", "BATCHD_CONTROL__COLOUR": "1"})
    problems = caught.value.problems
    assert any(
        p.startswith("max_concurrent_jobs: ") and "(from BATCHD_MAX_CONCURRENT_JOBS)" in p
        for p in problems
    ), problems
    assert "control.colour: unknown key (from BATCHD_CONTROL__COLOUR)" in problems
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {"BATCHD_JOBS": "jobs.end_of_day"})
    assert caught.value.problems[0].startswith("jobs: BATCHD_JOBS is not valid JSON")


# --------------------------------------------------------------------------- bad input


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    path = config_file(
        tmp_path / "b.toml",
        colour="red",
        control=dict(colour="blue"),
        schedules=[dict(name="eod", job="x", cron="* * * * *", colour="green")],
    )
    problems = problems_of(path)
    assert "colour: unknown key" in problems
    assert "control.colour: unknown key" in problems
    assert "schedules[0] (eod).colour: unknown key" in problems


def test_bad_cron_expression(tmp_path: Path, make_jobs: MakeJobs) -> None:
    module = make_jobs("cfg_eod")
    schedule = dict(name="eod", job="cfg_eod", cron="61 * * * *")
    path = config_file(tmp_path / "b.toml", jobs=[module], schedules=[schedule])
    [problem] = problems_of(path)
    assert problem.startswith("schedules[0] (eod).cron: bad cron expression '61 * * * *': ")


def test_bad_duration(tmp_path: Path) -> None:
    schedule = dict(name="eod", job="x", interval="often")
    path = config_file(tmp_path / "b.toml", stop_grace="soon", schedules=[schedule])
    problems = problems_of(path)
    assert any(p.startswith("stop_grace: not a duration: 'soon'") for p in problems), problems
    assert any(
        p.startswith("schedules[0] (eod).interval: not a duration: 'often'") for p in problems
    ), problems


def test_job_not_registered(tmp_path: Path, make_jobs: MakeJobs) -> None:
    module = make_jobs("cfg_eod")
    (tmp_path / "in").mkdir()
    schedule = dict(name="eod", job="cfg_nightly", cron="30 1 * * *")
    watch = dict(name="drop", job="cfg_import", directory=tmp_path / "in")
    path = config_file(tmp_path / "b.toml", jobs=[module], schedules=[schedule], watches=[watch])
    problems = problems_of(path)
    assert len(problems) == 2, problems
    assert problems[0].startswith(
        "schedules[0] (eod).job: no job named 'cfg_nightly' is registered (registered: "
    )
    assert "cfg_eod" in problems[0]  # the known jobs are listed
    assert problems[1].startswith("watches[0] (drop).job: no job named 'cfg_import'")


def test_template_with_unknown_variable(tmp_path: Path, make_jobs: MakeJobs) -> None:
    module = make_jobs("cfg_eod")
    (tmp_path / "in").mkdir()
    schedule = dict(name="eod", job="cfg_eod", cron="30 1 * * *")
    schedule["params"] = dict(date="{fired_date-1d}", ok="{fire_date:%Y%m%d}")
    watch = dict(name="drop", job="cfg_eod", directory=tmp_path / "in", regex=r"(?P<day>\d+)\.csv")
    watch["params"] = dict(file="{path}", day="{day}", when="{fire_date}")
    path = config_file(tmp_path / "b.toml", jobs=[module], schedules=[schedule], watches=[watch])
    problems = problems_of(path)
    assert len(problems) == 2, problems
    assert problems[0].startswith(
        "schedules[0] (eod).params.date: unknown template variable fired_date (available: "
    )
    # fire_date is a schedule's variable, not a watch's; the regex group day is fine.
    assert problems[1].startswith("watches[0] (drop).params.when: unknown template variable")


def test_watch_directory_missing_or_not_a_directory(tmp_path: Path, make_jobs: MakeJobs) -> None:
    module = make_jobs("cfg_import")
    (tmp_path / "file").write_text("x")
    missing = dict(name="payments", job="cfg_import", directory=tmp_path / "x" / "y")
    a_file = dict(name="other", job="cfg_import", directory=tmp_path / "file")
    path = config_file(tmp_path / "b.toml", jobs=[module], watches=[missing, a_file])
    assert problems_of(path) == [
        f"watches[0] (payments).directory: {tmp_path / 'x' / 'y'} does not exist",
        f"watches[1] (other).directory: {tmp_path / 'file'} is not a directory",
    ]


def test_module_import_error_names_the_module(tmp_path: Path, make_jobs: MakeJobs) -> None:
    broken = make_jobs("cfg_broken_job", extra="raise RuntimeError('boom at import')")
    path = config_file(tmp_path / "b.toml", jobs=["cfg_no_such_module", broken])
    assert problems_of(path) == [
        "jobs: cannot import module 'cfg_no_such_module': No module named 'cfg_no_such_module'",
        f"jobs: cannot import module '{broken}': RuntimeError: boom at import",
    ]
    # A failed load leaves nothing half-registered.
    assert "cfg_broken_job" not in default_registry


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('timezone = "Mars/Olympus"', "timezone: unknown time zone 'Mars/Olympus'"),
        ('stop_grace = "0s"', "stop_grace: must be longer than 0s"),
        ('lease = "10s"', "lease: 10s is less than three heartbeats (heartbeat = 5s)"),
        ('database_url = "oracle://x/y"', "database_url: unsupported database 'oracle'"),
        ('database_url = "::::"', "database_url: cannot parse database URL"),
        ("[control]\nmode = 660", 'control.mode: not an octal file mode string like "0660"'),
        ('[control]\nmode = "rw-rw----"', "control.mode: not an octal file mode string"),
        ('[metrics]\nlisten = "9464"', 'metrics.listen: not "host:port"'),
        ('[metrics]\nlisten = "::1:9464"', 'metrics.listen: not "host:port"'),
        (
            '[[schedules]]\nname = "a"\njob = "j"\ncron = "* * * * *"\ntimezone = "Nowhere"',
            "schedules[0] (a).timezone: unknown time zone 'Nowhere'",
        ),
        (
            '[[schedules]]\nname = "a"\njob = "j"',
            "schedules[0] (a): give exactly one of cron or interval",
        ),
        (
            '[[schedules]]\nname = "a"\njob = "j"\ninterval = "0s"',
            "schedules[0] (a).interval: interval must be positive",
        ),
        (
            '[[schedules]]\nname = "a"\njob = "j"\ncron = "* * * * *"\ncatch_up = "some"',
            "schedules[0] (a).catch_up: Input should be 'none', 'latest' or 'all'",
        ),
        ('[[schedules]]\nname = "a"\ncron = "* * * * *"', "schedules[0] (a).job: missing"),
        (
            '[[watches]]\nname = "w"\njob = "j"\ndirectory = "."\nregex = "(unclosed"',
            "watches[0] (w).regex: bad regex '(unclosed'",
        ),
        (
            '[[watches]]\nname = "w"\njob = "j"\ndirectory = "."\npattern = "*"\nregex = "x"',
            "watches[0] (w): give pattern or regex, not both",
        ),
    ],
)
def test_more_bad_values_name_their_key(tmp_path: Path, toml: str, expected: str) -> None:
    path = write(tmp_path / "b.toml", toml + "\n")
    problems = problems_of(path)
    assert any(p.startswith(expected) for p in problems), problems


def test_duplicate_names(tmp_path: Path, make_jobs: MakeJobs) -> None:
    module = make_jobs("cfg_eod")
    nightly = dict(name="eod", job="cfg_eod", cron="30 1 * * *")
    quarterly = dict(name="eod", job="cfg_eod", interval="15m")
    watch = dict(name="eod", job="cfg_eod", directory=tmp_path)
    path = config_file(
        tmp_path / "b.toml", jobs=[module], schedules=[nightly, quarterly], watches=[watch]
    )
    # A watch may share a schedule's name: they are separate namespaces.
    assert problems_of(path) == [
        "schedules[1] (eod).name: duplicate name 'eod' (also schedules[0])"
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path, make_jobs: MakeJobs) -> None:
    module = make_jobs("cfg_eod")
    schedule = dict(name="eod", job="cfg_eod", cron="61 * * * *", params=dict(date="{when}"))
    watch = dict(name="payments", job="cfg_import", directory=tmp_path / "nope")
    path = config_file(
        tmp_path / "b.toml",
        jobs=[module, "cfg_missing_module"],
        lease="6s",
        schedules=[schedule],
        watches=[watch],
    )
    keys = [p.split(":", 1)[0] for p in problems_of(path)]
    assert keys == [
        "jobs",
        "lease",
        "schedules[0] (eod).cron",
        "schedules[0] (eod).params.date",
        "watches[0] (payments).job",
        "watches[0] (payments).directory",
    ]


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "b.toml", 'jobs = ["a"]\nmax_concurrent_jobs = = 3\n')
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: TOML syntax error: ")
    assert "line 2" in problem


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert problems_of(path) == [f"{path}: no such file"]


def test_check_alone(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"schedules": [{"name": "a", "job": "cfg_unknown", "interval": "1m"}]}
    )
    with pytest.raises(ConfigError) as caught:
        check(settings, default_registry)
    assert caught.value.problems[0].startswith("schedules[0] (a).job: no job named 'cfg_unknown'")


# --------------------------------------------------------------------------- reload


def test_reload_reimports_modules_and_a_bad_reload_changes_nothing(
    tmp_path: Path, make_jobs: MakeJobs
) -> None:
    module = make_jobs("cfg_v1")
    settings = load_settings(write(tmp_path / "b.toml", f'jobs = ["{module}"]\n'), {})
    first = load_jobs(settings)
    assert "cfg_v1" in first

    make_jobs("cfg_v1", "cfg_v2", module=module)
    assert "cfg_v2" in load_jobs(settings, reload=True)
    v1 = default_registry.get("cfg_v1")

    make_jobs("cfg_v1", "cfg_v3", module=module, extra="raise ValueError('half written')")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "b.toml", {}, reload=True)
    assert caught.value.problems == [
        f"jobs: cannot import module '{module}': ValueError: half written"
    ]
    assert "cfg_v3" not in default_registry  # registered before the error, rolled back
    assert default_registry.get("cfg_v1") is v1
    assert "cfg_v2" in default_registry


# --------------------------------------------------------------------------- the command


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    clean["PYTHONPATH"] = os.pathsep.join([str(cwd), str(REPO)])
    return subprocess.run(
        [sys.executable, "-m", "batchd.cli", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_command(tmp_path: Path, make_jobs: MakeJobs) -> None:
    module = make_jobs("cfg_eod", "cfg_import")
    path = good_config(tmp_path, module)
    result = run_cli("check-config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config OK: 2 jobs, 1 schedule, 1 watch"

    # BATCHD_CONFIG instead of --config; a bad override makes it bad.
    result = run_cli(
        "check-config",
        cwd=tmp_path,
        env={"BATCHD_CONFIG": str(path), "BATCHD_STOP_GRACE": "soon"},
    )
    assert result.returncode == EX_CONFIG == 78
    assert result.stderr.splitlines()[0] == f"batchd: bad config {path}:"
    assert "stop_grace: not a duration: 'soon'" in result.stderr
    assert "(from BATCHD_STOP_GRACE)" in result.stderr


def test_check_config_command_lists_every_problem(tmp_path: Path) -> None:
    watch = dict(name="payments", job="cfg_import", directory=tmp_path / "x")
    path = config_file(tmp_path / "bad.toml", colour="red", jobs=["cfg_nope"], watches=[watch])
    result = run_cli("check-config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 78
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [f"batchd: bad config {path}:", "  colour: unknown key"]

    path.write_text(path.read_text().replace('colour = "red"\n', ""))
    result = run_cli("check-config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f"batchd: bad config {path}:",
        "  jobs: cannot import module 'cfg_nope': No module named 'cfg_nope'",
        "  watches[0] (payments).job: no job named 'cfg_import' is registered (registered: none)",
        f"  watches[0] (payments).directory: {tmp_path / 'x'} does not exist",
    ]


def test_shipped_example_config_passes(tmp_path: Path) -> None:
    spool = tmp_path / "payments"
    spool.mkdir()
    example = (REPO / "etc" / "batchd.toml").read_text()
    assert '"/var/spool/batchd/payments"' in example
    config = tmp_path / "batchd.toml"
    config.write_text(example.replace("/var/spool/batchd/payments", str(spool)))
    result = run_cli(
        "check-config",
        "--config",
        str(config),
        cwd=REPO,
        env={"BATCHD_DATABASE_URL": f"sqlite:///{tmp_path / 'batchd.db'}"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config OK: 2 jobs, 1 schedule, 1 watch"
