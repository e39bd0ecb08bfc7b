"""The real daemon retries a job's FAILED executions as its ``[job.<name>]`` section says,
until they complete or the retries are spent; permanent errors are not retried."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batchd.daemon.config import ConfigError, load_config
from tests.daemon.support import (
    Launched,
    control_config,
    wait_until,
)
from tests.daemon.test_ctl import ok
from tests.daemon.test_daemon import executions

RETRIES = """
[job.flaky]
retries = 3
retry_delay = "0s"

[job.doomed]
retries = 3
retry_delay = "0s"
"""


def test_the_daemon_retries_until_the_job_completes(
    launch: Callable[..., Launched],
    tmp_path: Path,
) -> None:
    config = control_config(tmp_path, RETRIES, jobs='["tests.daemon.retry_jobs"]')
    control = launch(config).connect()
    counter = tmp_path / "counter"
    counter.write_text("2")
    control.call("start", job="flaky", params={"counter": str(counter)})
    control.call("start", job="doomed", params={})

    def three_runs() -> object:
        runs = executions(tmp_path, "flaky")
        return len(runs) == 3 and not runs[0].status.is_running  # type: ignore[attr-defined]

    wait_until(three_runs, timeout=60, what="the second retry of flaky to end")
    runs = list(reversed(executions(tmp_path, "flaky")))
    assert [(r.status.value, r.attempt) for r in runs] == [  # type: ignore[attr-defined]
        ("FAILED", 1),
        ("FAILED", 2),
        ("COMPLETED", 3),
    ]
    assert len({r.instance_id for r in runs}) == 1  # type: ignore[attr-defined]
    doomed = executions(tmp_path, "doomed")
    assert [(r.status.value, r.exit_status) for r in doomed] == [  # type: ignore[attr-defined]
        ("FAILED", "FAILED_PERMANENT")
    ]


def test_the_retries_of_an_unknown_job_or_a_bad_delay_are_config_errors(
    tmp_path: Path,
) -> None:
    config = tmp_path / "batchd.toml"
    config.write_text(
        control_config(
            tmp_path,
            '[job.ghost]\nretries = 2\n[job.flaky]\nretries = 2\nretry_delay = "soon"\n',
            jobs='["tests.daemon.retry_jobs"]',
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config, {})
    problems = "\n".join(caught.value.problems)
    assert "job.flaky.retry_delay" in problems and "not a duration: 'soon'" in problems
    config.write_text(
        control_config(tmp_path, "[job.ghost]\nretries = 2\n", jobs='["tests.daemon.retry_jobs"]')
    )
    with pytest.raises(ConfigError, match=r"job\.ghost: no job 'ghost' is registered"):
        load_config(config, {})


def test_ctl_shows_attempts_exit_statuses_and_the_history_and_starts_the_next_run(
    launch: Callable[..., Launched],
    tmp_path: Path,
) -> None:
    config = control_config(tmp_path, RETRIES, jobs='["tests.daemon.retry_jobs"]')
    launched = launch(config)
    sock = str(launched.socket)
    counter = tmp_path / "counter"
    counter.write_text("1")
    ok("start", "flaky", json.dumps({"counter": str(counter)}), "--socket", sock)
    wait_until(lambda: len(executions(tmp_path, "flaky")) == 2, timeout=60, what="the retry")
    launched.connect().wait_for_status(2, "COMPLETED")
    table = ok("executions", "--socket", sock)
    assert "COMPLETED (attempt 2)" in table
    views = json.loads(ok("--json", "executions", "flaky", "--socket", sock))["executions"]
    assert [(e["attempt"], e["exit_status"]) for e in views] == [(2, "COMPLETED"), (1, "FAILED")]

    first = json.loads(ok("--json", "start", "report", "--next", "--socket", sock))
    launched.connect().wait_for_status(first["id"], "COMPLETED")
    second = json.loads(ok("--json", "start", "report", "--next", "--socket", sock))
    assert (first["params"], second["params"]) == ({"run_id": 1}, {"run_id": 2})
    detail = ok("execution", str(first["id"]), "--socket", sock)
    assert any(line.split()[:3] == ["exit", "status", "NOOP"] for line in detail.splitlines())
    step_rows = [line.split("│") for line in detail.splitlines() if line.count("│") == 9]
    assert [(r[0].strip(), r[1].strip(), r[2].strip()) for r in step_rows] == [
        ("report", "COMPLETED", "NOOP")
    ]

    history = ok("execution", "1", "--history", "--socket", sock)
    rows = [line.split("│") for line in history.splitlines() if line.count("│") == 4]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [
        ("(execution)", "STARTING"),
        ("(execution)", "STARTED"),
        ("post", "STARTED"),
        ("post", "FAILED"),
        ("(execution)", "FAILED"),
    ]
    as_json = json.loads(ok("--json", "execution", "1", "--history", "--socket", sock))
    assert as_json["history"][-1]["message"].startswith("step 'post' FAILED: LedgerLocked")
