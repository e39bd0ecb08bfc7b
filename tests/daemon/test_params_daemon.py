"""Parameters through the real daemon: `batchd ctl start --param` types its values as JSON,
hostile parameters on the control socket write nothing, an error between creating an
execution and running it ends it FAILED (and SIGTERM does not wait for it), and a watch's
``file = "{path}"`` reaches the dropped file but a trigger file's ``file`` cannot point a
reader elsewhere."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from batchd.ctl import RUNNING
from tests.daemon.support import (
    Control,
    Launch,
    control_config,
    table_counts,
    wait_until,
)
from tests.daemon.test_ctl import ctl, ok

JOBS = '["tests.daemon.daemon_jobs", "tests.daemon.params_jobs"]'


def strict_json(text: str) -> Any:
    """JSON as jq reads it: NaN and Infinity are errors."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def nested(levels: int) -> dict[str, Any]:
    inner: dict[str, Any] = {}
    for _ in range(levels - 1):
        inner = {"a": inner}
    return inner


def test_ctl_param_values_are_json_scalars_when_they_are_one(
    launch: Launch,
) -> None:
    launched = launch(jobs=JOBS)
    sock = str(launched.socket)
    control = launched.connect()
    by_param = strict_json(ok("start", "echo", "--param", "run=2", "--json", "--socket", sock))
    assert by_param["params"] == {"run": 2}
    control.wait_for_status(by_param["id"], "COMPLETED")
    # The same intent as a JSON object is the same instance: already complete.
    again = ctl("start", "echo", '{"run": 2}', "--socket", sock)
    assert again.returncode == 1
    assert again.stderr.startswith("batchd: JobInstanceAlreadyComplete: ")

    pairs = {
        "count": "3",
        "ratio": "2.5",
        "flag": "true",
        "off": "false",
        "none": "null",
        "quoted": '"2"',
        "day": "2026-11-21",
        "zip": "007",
        "odd": "NaN",
        "huge": "1e999",
        "list": "[1, 2]",
        "text": "two words",
    }
    arguments = [part for name, value in pairs.items() for part in ("--param", f"{name}={value}")]
    typed = strict_json(ok("start", "echo", *arguments, "--json", "--socket", sock))
    # Six typed; the other six stay the strings given.
    assert typed["params"] == {
        "count": 3,
        "ratio": 2.5,
        "flag": True,
        "off": False,
        "none": None,
        "quoted": "2",
    } | {name: pairs[name] for name in ("day", "zip", "odd", "huge", "list", "text")}


def test_hostile_parameters_on_the_socket_write_nothing(
    launch: Launch,
) -> None:
    launched = launch(jobs=JOBS)
    control = launched.connect()
    before = table_counts(launched.database)
    for constant in ("NaN", "Infinity", "-Infinity"):
        line = f'{{"v": 1, "op": "start", "job": "echo", "params": {{"x": {constant}}}}}'
        response = control.request(line.encode())
        assert response["ok"] is False
        assert response["error"]["type"] == "InvalidJobParameters"
    deep = control.error("start", job="echo", params=nested(600))
    assert deep == {
        "type": "InvalidJobParameters",
        "message": "parameter 'a' nests deeper than 32 levels",
    }
    surrogate = control.request(b'{"v":1,"op":"start","job":"echo","params":{"x":"\\udc80"}}')
    assert surrogate["error"]["type"] == "InvalidJobParameters", surrogate
    assert table_counts(launched.database) == before
    listed = strict_json(ok("executions", "--json", "--socket", str(launched.socket)))
    assert listed == {"executions": []}


def test_an_error_after_creating_an_execution_fails_it_and_sigterm_does_not_wait(
    launch: Launch,
) -> None:
    launched = launch(
        jobs=JOBS,
        stop_grace='"10m"',
        env={"BATCHD_FAILPOINTS": "operator.after_create_execution=raise"},
    )
    control = launched.connect()
    refused = control.error("start", job="echo", params={"run": 1})
    assert refused["type"] == "FailpointHit"
    [execution] = control.call("executions")["executions"]
    assert execution["status"] == "FAILED"
    assert execution["exit_message"].startswith("not started: FailpointHit: ")
    assert control.call("stop", job="echo")["stopped"] == []  # nothing left to stop
    launched.daemon.signal(signal.SIGTERM)
    assert launched.daemon.wait(60) == 0  # not the 10 minutes of stop_grace


def test_a_watch_reaches_its_file_and_a_trigger_file_cannot_point_elsewhere(
    launch: Launch,
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    watch = (
        '[[watches]]\nname = "rows"\njob = "read_rows"\n'
        f'directory = "{spool}"\npattern = "*.*"\nparams = {{ file = "{{path}}" }}\n'
        'stable_for = "0.2s"\n'
    )
    launched = launch(control_config(tmp_path, watch, jobs=JOBS))
    control = launched.connect()
    (spool / ".rows.partial").write_text("n\n1\n2\n")
    (spool / ".rows.partial").rename(spool / "rows.csv")
    [read] = wait_for_executions(control, 1)
    assert read["status"] == "COMPLETED", read
    assert read["steps"][0]["read_count"] == 2

    (spool / ".evil.partial").write_text(json.dumps({"file": str(secret)}))
    (spool / ".evil.partial").rename(spool / "evil.json")
    evil, _ = wait_for_executions(control, 2)
    assert evil["params"] == {"file": str(secret)}
    assert evil["status"] == "FAILED"
    assert "InvalidJobParameters: parameter 'file'" in evil["exit_message"]
    assert evil["steps"][0]["read_count"] == 0


def wait_for_executions(control: Control, count: int) -> list[dict[str, Any]]:
    """The executions (newest first, with their steps) once there are ``count``, all ended."""

    def ended() -> list[dict[str, Any]]:
        found = control.call("executions")["executions"]
        if len(found) < count or any(e["status"] in RUNNING for e in found):
            return []
        return [control.call("execution", id=e["id"]) for e in found]

    result = wait_until(ended, timeout=60, what=f"{count} ended executions")
    assert isinstance(result, list)
    return result
