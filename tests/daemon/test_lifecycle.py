"""The daemon's lifecycle: a component whose background thread dies fails the watchdog and
stops the daemon with a status that systemd's ``Restart=on-failure`` restarts; the signal
handlers the daemon found are back when it returns, whether it stopped or failed to start."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from batchd.daemon.notify import SystemdNotifier
from batchd.daemon.service import EX_CANTCREAT, Daemon
from tests.daemon.support import Launch, control_config, wait_until
from tests.daemon.test_daemon import NotifySocket, drop, executions, watch

EX_SOFTWARE = 70
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def rest_of(notify: NotifySocket) -> list[str]:
    """The lines of every datagram still queued on ``notify`` (the daemon has exited)."""
    notify.sock.setblocking(False)
    lines: list[str] = []
    while True:
        try:
            lines += notify.sock.recv(4096).decode().splitlines()
        except BlockingIOError:
            return lines


def test_a_dead_watcher_thread_stops_the_watchdog_and_the_daemon_exits_70(
    tmp_path: Path,
    launch: Launch,
) -> None:
    config = control_config(tmp_path, watch(tmp_path), stop_grace='"1s"')
    failing = {"WATCHDOG_USEC": "400000", "BATCHD_FAILPOINTS": "daemon.component_thread_dies=raise"}
    first = launch(config, failing)
    first.daemon.notify.wait_for("WATCHDOG=1")
    # A job that ignores stop requests outlives stop_grace: the status must survive that too.
    with closing(first.connect()) as control:
        stubborn = control.call("start", job="stubborn", params={"file": "x"})
        control.wait_for_status(stubborn["id"], "STARTED")

    # The watcher's worker thread dies as it is about to take this file.
    drop(tmp_path / "drop-numbers", "batch1.txt", range(1, 11))
    stopping = first.daemon.notify.wait_for("STOPPING=1")
    assert "STATUS=thread died: watcher (batchd-watcher): stopping 1 running executions" in (
        stopping
    )
    assert first.daemon.wait(30) == EX_SOFTWARE
    assert "WATCHDOG=1" not in rest_of(first.daemon.notify)
    assert "thread died: watcher (batchd-watcher)" in first.daemon.output()
    assert executions(tmp_path, "count_file") == []

    # What systemd then does: start it again. The file is taken, once.
    second = launch(config, {"WATCHDOG_USEC": "400000"})
    second.daemon.notify.wait_for("WATCHDOG=1")
    taken = wait_until(
        lambda: [e for e in executions(tmp_path, "count_file") if e.status == "COMPLETED"]
    )
    assert len(taken) == 1 and len(executions(tmp_path, "count_file")) == 1


@pytest.fixture
def environment_kept() -> Iterator[None]:
    """The environment as it was: a config load exports ``BATCHD_DATABASE_URL`` (for job
    modules), which the daemons later tests start would otherwise inherit."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def run_in_process(config_text: str, tmp_path: Path, notify: NotifySocket | None = None) -> int:
    """``batchd run`` in this process (its main thread, where signal handlers live)."""
    config_path = tmp_path / "batchd.toml"
    config_path.write_text(config_text)
    env = {"NOTIFY_SOCKET": str(notify.path)} if notify is not None else {}
    return Daemon(config_path, notifier=SystemdNotifier(env)).run()


@pytest.mark.usefixtures("environment_kept")
def test_signal_handlers_are_restored_after_a_stop_signal(tmp_path: Path) -> None:
    before = {signum: signal.getsignal(signum) for signum in HANDLED}
    notify = NotifySocket(tmp_path / "notify.sock")

    def stop_once_ready() -> None:
        notify.wait_for("READY=1")  # the daemon's handlers are in place by then
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_once_ready)
    stopper.start()
    try:
        assert run_in_process(control_config(tmp_path), tmp_path, notify) == 0
    finally:
        stopper.join()
        notify.close()
    assert {signum: signal.getsignal(signum) for signum in HANDLED} == before


@pytest.mark.usefixtures("environment_kept")
def test_signal_handlers_are_restored_after_a_failed_start(tmp_path: Path) -> None:
    before = {signum: signal.getsignal(signum) for signum in HANDLED}
    too_long = tmp_path / ("s" * 120) / "control.sock"
    config_text = control_config(tmp_path, socket_path=too_long)
    assert run_in_process(config_text, tmp_path) == EX_CANTCREAT
    assert {signum: signal.getsignal(signum) for signum in HANDLED} == before
