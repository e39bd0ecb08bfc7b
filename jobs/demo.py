"""The daemon on SQLite, in a fresh temporary directory: ``python -m jobs.demo``.

It writes a config, starts ``batchd run``, drops a payments file into the watched
directory, fires the end-of-day schedule over the control socket, shows
``batchd ctl executions`` and a few metrics, and stops the daemon with SIGTERM.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
BATCHD = [sys.executable, "-m", "batchd.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# The daemon's time zone: the fire date (and so the business date) is the date there.
TIMEZONE = "Europe/Berlin"


def write_config(work: Path, port: int) -> Path:
    (work / "spool" / "payments").mkdir(parents=True)
    config = work / "batchd.toml"
    config.write_text(
        f"""\
database_url = "sqlite:///{work / "batchd.db"}"
jobs = ["jobs.end_of_day", "jobs.file_import"]
jobs_path = ["{ROOT}"]
timezone = "{TIMEZONE}"
stop_grace = "10s"

[control]
socket = "{work / "control.sock"}"
mode = "0600"

[metrics]
listen = "127.0.0.1:{port}"

[[schedules]]
name = "eod"
job = "end_of_day"
cron = "30 1 * * *"
params = {{ date = "{{fire_date-1d}}", data_dir = "{work / "data"}", out_dir = "{work / "out"}" }}
catch_up = "all"

[[watches]]
name = "payments"
job = "file_import"
directory = "{work / "spool" / "payments"}"
pattern = "payments_*.csv"
params = {{ file = "{{path}}" }}
"""
    )
    return config


def write_transactions(path: Path, count: int) -> None:
    rng = random.Random(7)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["txn_id,account,amount,currency"] + [
        f"t{i:06d},DE{rng.randrange(10, 30)}0000,{rng.uniform(-500, 900):.2f},EUR"
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")


def drop_payments(directory: Path, count: int) -> Path:
    today = dt.date.today()
    lines = ["payment_id,value_date,debtor,creditor,amount"] + [
        f"p{i:06d},{today},DE{i % 7}000,DE{i % 11}111,{(i * 37) % 1000}.{i % 100:02d}"
        for i in range(count)
    ]
    partial = directory / ".payments.partial"
    partial.write_text("\n".join(lines) + "\n")
    final = directory / f"payments_{today:%Y%m%d}.csv"
    partial.rename(final)  # appears atomically, as a sender should deliver it
    return final


def ctl(config: Path, *args: str, json_output: bool = False) -> str:
    command = [*BATCHD, "ctl", "--config", str(config), *(["--json"] if json_output else []), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def wait_for(what: str, predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="batchd-demo-"))
    port = free_port()
    config = write_config(work, port)
    fire_date = dt.datetime.now(ZoneInfo(TIMEZONE)).date()
    write_transactions(
        work / "data" / f"transactions_{fire_date - dt.timedelta(days=1):%Y%m%d}.csv", 2000
    )
    print(f"== batchd demo in {work}\n== batchd run --config {config}")
    log = open(work / "daemon.log", "w")  # noqa: SIM115 - the daemon writes it until the end
    daemon = subprocess.Popen(
        [*BATCHD, "run", "--config", str(config)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for("the control socket", lambda: "pong" in ctl(config, "ping", json_output=True))
        print(ctl(config, "ping"))

        dropped = drop_payments(work / "spool" / "payments", 5000)
        print(f"== dropped {dropped.name} into the payments watch")
        print("== batchd ctl fire eod")
        print(ctl(config, "fire", "eod"))

        def all_done() -> bool:
            found = json.loads(ctl(config, "executions", json_output=True))["executions"]
            return len(found) >= 2 and all(e["status"] == "COMPLETED" for e in found)

        wait_for("both executions to complete", all_done)
        print("== batchd ctl executions")
        print(ctl(config, "executions"))
        print("== batchd ctl schedules")
        print(ctl(config, "schedules"))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        print(f"== some metrics from http://127.0.0.1:{port}/metrics")
        for line in metrics.decode().splitlines():
            if line.startswith(("batchd_job_executions_total", "batchd_job_last_status")) and (
                line.endswith(" 1.0")
            ):
                print("  ", line)
    finally:
        daemon.send_signal(signal.SIGTERM)
        status = daemon.wait(30)
        log.close()
    print(f"== SIGTERM: the daemon exited with status {status}; its log: {work / 'daemon.log'}")
    print(f"== balances report: {next((work / 'out').glob('balances_*.csv'))}")
    print_next_steps(config)
    return status


def print_next_steps(config: Path) -> None:
    """Three commands to try next, runnable as printed from this directory."""
    bin_dir = Path(os.path.relpath(Path(sys.executable).parent))
    batchd, python = bin_dir / "batchd", bin_dir / "python"
    print(
        "== try next:\n"
        f"   {batchd} run --config {config}\n"
        "       # the demo's daemon again, in the foreground; Ctrl-C stops it\n"
        f"   {batchd} ctl --config {config} executions\n"
        "       # from a second terminal while it runs; also: schedules, fire eod, nodes\n"
        f"   {python} -m jobs.tour\n"
        "       # the Python API: run a date, refuse it twice, fail, restart"
    )


if __name__ == "__main__":
    os.environ.pop("BATCHD_DATABASE_URL", None)  # the daemon takes it from its config
    sys.exit(main())
