"""The web console inside the real daemon: it follows a reload, and a console that cannot
bind stops the start-up with a message that names it."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.daemon.support import DaemonProcess, control_config, launch
from tests.web.conftest import fetch
from tests.web.test_web_browser import console_url

__all__ = ["launch"]

JOBS = '["tests.web.web_jobs"]'


def schedule(name: str) -> str:
    return f'[[schedules]]\nname = "{name}"\njob = "eod"\ncron = "0 0 1 1 *"\n'


def test_the_schedules_page_follows_a_reload(launch, tmp_path: Path) -> None:
    web = '[web]\nlisten = "127.0.0.1:0"\n'
    daemon = launch(control_config(tmp_path, web + schedule("first"), jobs=JOBS))
    url = console_url(daemon)
    names = [s["name"] for s in fetch(url + "/schedules?format=json").json()["schedules"]]
    assert names == ["first"]
    daemon.daemon.config_path.write_text(
        control_config(tmp_path, web + schedule("first") + schedule("second"), jobs=JOBS)
    )
    assert daemon.connect().call("reload")["accepted"]
    page = fetch(url + "/schedules?format=json").json()
    assert [s["name"] for s in page["schedules"]] == ["first", "second"]
    assert page["schedules"][1]["next_fire_time"].endswith("-01-01T00:00:00+00:00")


def test_a_console_that_cannot_bind_stops_the_start_up(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        web = f'[web]\nlisten = "127.0.0.1:{port}"\n'
        daemon = DaemonProcess(tmp_path, control_config(tmp_path, web, jobs=JOBS))
        try:
            assert daemon.wait(30) == 73  # EX_CANTCREAT, as for the control socket
        finally:
            daemon.stop()
    assert "cannot open the web console" in daemon.output()
