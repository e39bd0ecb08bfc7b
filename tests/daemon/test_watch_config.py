"""Watch configs: what ``batchd check-config`` accepts, ``batchd run`` runs, and what one
refuses the other refuses too (exit 78, the key named) — one validation for both."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from batchd.daemon.config import EX_CONFIG
from tests.daemon.test_config import run_cli

JOBS = '["tests.daemon.daemon_jobs"]'


def watch_config(tmp_path: Path, **watch: str) -> Path:
    """A config with one watch "drop" of job "dated" on tmp_path/inbox; ``watch`` adds or
    replaces its keys (TOML values)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    keys = {
        "name": '"drop"',
        "job": '"dated"',
        "directory": f'"{inbox}"',
        "params": '{ date = "{mtime_date}" }',
        **watch,
    }
    path = tmp_path / "batchd.toml"
    path.write_text(
        f'database_url = "sqlite:///{tmp_path / "batchd.db"}"\njobs = {JOBS}\n'
        f'[control]\nsocket = "{tmp_path / "ctl.sock"}"\n[metrics]\nlisten = ""\n'
        "[[watches]]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items())
    )
    return path


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("check-config", "--config", str(path), cwd=path.parent)


def run(path: Path) -> subprocess.CompletedProcess[str]:
    """``batchd run`` on a config it must refuse (a good one would run until the timeout)."""
    return run_cli("run", "--config", str(path), cwd=path.parent)


BAD_WATCHES = [
    pytest.param({"stable_for": '"0s"'}, "watches[0] (drop).stable_for: must be longer than 0s"),
    pytest.param(
        {"regex": "'(?P<name>.*)'", "params": '{ date = "{mtime_date}" }'},
        "watches[0] (drop).regex: group name shadows a built-in variable; rename the group",
    ),
    pytest.param(
        {"params": '{ date = "{day(ymd)}" }', "regex": "'(?P<day>.*)'"},
        "watches[0] (drop).params.date: {day(ymd)}: the date format in parentheses has no "
        "strptime directive",
    ),
]


@pytest.mark.parametrize(("watch", "problem"), BAD_WATCHES)
def test_a_watch_run_refuses_is_refused_by_check_config_too(
    tmp_path: Path, watch: dict[str, str], problem: str
) -> None:
    path = watch_config(tmp_path, **watch)
    checked = check_config(path)
    assert checked.returncode == EX_CONFIG, checked.stderr
    assert problem in checked.stderr

    ran = run(path)
    assert ran.returncode == EX_CONFIG, ran.stderr
    assert problem in ran.stderr
    assert "Traceback" not in ran.stderr
    assert not (tmp_path / "batchd.db").exists()  # refused before joining: no node row left


def test_every_documented_variable_and_a_parsed_group_pass_check_config(tmp_path: Path) -> None:
    path = watch_config(
        tmp_path,
        regex=r"'d(?P<day>\d{8})\.txt'",
        params=(
            '{ date = "{day(%Y%m%d)-1d}", file = "{path}", name = "{name}", stem = "{stem}", '
            'suffix = "{suffix}", dir = "{directory}", at = "{mtime}", on = "{mtime_date}", '
            'size = "{size}", watch = "{watch}", sha = "{sha256}" }'
        ),
    )
    checked = check_config(path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "config OK: 3 jobs, 0 schedules, 1 watch"
