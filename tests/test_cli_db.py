"""`batchd db current` / `batchd db upgrade` with a database they cannot use: one line on
stderr and the exit status `batchd run` gives for the same URL, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EX_CONFIG, EX_UNAVAILABLE = 78, 69


def batchd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchd.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


BAD = [
    pytest.param("oracle://x/y", EX_CONFIG, "unsupported database 'oracle'", id="unsupported"),
    pytest.param("not a url", EX_CONFIG, "cannot parse database URL", id="unparsable"),
    pytest.param(
        "sqlite:////nonexistent/directory/batchd.db",
        EX_UNAVAILABLE,
        "cannot open database sqlite:////nonexistent/directory/batchd.db: unable to open",
        id="sqlite-no-directory",
    ),
    pytest.param(
        "postgresql+psycopg://batch:secret@127.0.0.1:1/batch",
        EX_UNAVAILABLE,
        "cannot open database postgresql+psycopg://batch:***@127.0.0.1:1/batch: connection",
        id="postgresql-refused",
    ),
]


@pytest.mark.parametrize(("url", "status", "message"), BAD)
@pytest.mark.parametrize("command", ["current", "upgrade"])
def test_a_bad_database_url_gives_one_line_and_the_exit_status_of_run(
    command: str, url: str, status: int, message: str
) -> None:
    result = batchd("db", command, "--database-url", url)
    assert result.returncode == status
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"batchd: {message}")
    assert "secret" not in line


@pytest.mark.parametrize(("url", "status", "message"), [BAD[0], BAD[2]])
def test_batchd_run_says_the_same(tmp_path: Path, url: str, status: int, message: str) -> None:
    config = tmp_path / "batchd.toml"
    config.write_text(f'database_url = "{url}"\njobs = []\n')
    result = batchd("run", "--config", str(config))
    assert result.returncode == status
    assert message in result.stderr
