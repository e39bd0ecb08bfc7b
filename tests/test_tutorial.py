"""The README's tutorial, run as written: its Python blocks that start with ``# <file>.py``
are written to those files in an empty directory and ``run_hello.py`` runs there in a fresh
interpreter, as a reader following the tutorial would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def tutorial_files() -> dict[str, str]:
    text = README.read_text()
    section = text[text.index("## Tutorial") : text.index("## How it works")]
    files = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        named = re.match(r"# ([\w/]+\.py)\b", block)
        if named:
            files[named[1]] = block
    return files


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    files = tutorial_files()
    assert set(files) == {"jobs/hello.py", "run_hello.py"}
    for name, code in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(code)
    env = {key: value for key, value in os.environ.items() if not key.startswith("BATCHD_")}
    done = subprocess.run([sys.executable, "run_hello.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "2026-11-21 COMPLETED [('announce', 0, 0), ('shout', 2, 2)]" in out
    # The failed run says why: its exit message names the missing input.
    assert "2026-11-22 FAILED" in out
    assert "input file not found: 'in/names_20261122.csv'" in out
    assert "refused: job 'hello' already COMPLETED" in out
    assert (tmp_path / "out" / "names_20261121.csv").read_text().split() == ["name", "ADA", "GRACE"]
