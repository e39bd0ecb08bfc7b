"""The web console in a real browser (Debian's chromium, headless) against a real daemon:
what a person sees on each page, the progress bar of a running step moving, hostile names
shown as text and never run, and screenshots kept as test artefacts (tests/artifacts/)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from tests.daemon.support import Control, Launched, control_config, launch, wait_until
from tests.web.browser import Browser, png_colours
from tests.web.web_jobs import HOSTILE_JOB, HOSTILE_MESSAGE

__all__ = ["launch"]

pytestmark = pytest.mark.slow

# The colours of console.css, as a screenshot shows them.
GREEN, RED, BLUE = (0x1A, 0x7F, 0x37), (0xCF, 0x22, 0x2E), (0x09, 0x69, 0xDA)
DATES = ("2026-11-18", "2026-11-19", "2026-11-20")


def web_config(tmp: Path) -> str:
    inbox = tmp / "inbox"
    inbox.mkdir()
    extra = f"""
[web]
listen = "127.0.0.1:0"

[[schedules]]
name = "post"
job = "posting"
cron = "0 0 1 1 *"
params = {{ date = "{{business_date}}" }}
after = [{{ job = "eod", params = {{ date = "{{business_date}}" }} }}]
deadline = "5h"

[[watches]]
name = "inbox"
job = "import_file"
directory = "{inbox}"
pattern = "*.csv"
params = {{ file = "{{path}}" }}
stable_for = "0.2s"
"""
    return control_config(tmp, extra, jobs='["tests.web.web_jobs"]')


def console_url(daemon: Launched) -> str:
    found = wait_until(
        lambda: re.search(r"web console on (http://\S+)/", daemon.daemon.output()),
        what="the web console's address in the daemon's log",
    )
    return found.group(1)  # type: ignore[union-attr]


def step_read(control: Control, execution_id: int) -> int:
    steps = control.call("execution", id=execution_id)["steps"]
    return int(steps[0]["read_count"]) if steps else 0


def cell(dom: str, job: str, day: str) -> str:
    """The grid cell of ``job`` on ``day``: its link, with the status as symbol and word."""
    header = f'<th scope="row" class="job">{html.escape(job, quote=False)}</th>'
    row = dom.split(header, 1)[1].split("</tr>", 1)[0]
    match = re.search(r'<a class="cell [^"]*"[^>]* title="' + day + r": (?:(?!</a>).)*</a>", row)
    assert match, f"no cell for {job} {day}"
    return match.group(0)


def test_what_a_person_sees_in_the_browser(launch, browser: Browser, tmp_path: Path) -> None:
    daemon = launch(web_config(tmp_path))
    url = console_url(daemon)
    control = daemon.connect()
    for day in DATES:
        done = control.call("start", job="eod", params={"date": day, "items": 30})
        control.wait_for_status(done["id"], "COMPLETED")
    failed = control.call(
        "start", job="posting", params={"date": DATES[-1], "why": "ledger closed"}
    )
    control.wait_for_status(failed["id"], "FAILED")
    hostile = control.call(
        "start", job=HOSTILE_JOB, params={"date": DATES[-1], "why": HOSTILE_MESSAGE}
    )
    control.wait_for_status(hostile["id"], "FAILED")
    # A run that reads only as far as the gate lets it: its progress bar is measured
    # against the last completed run (30 items).
    gate = tmp_path / "gate"
    gate.write_text("10")
    running = control.call(
        "start", job="eod", params={"date": "2026-11-21", "items": 30, "gate": str(gate)}
    )["id"]
    wait_until(lambda: step_read(control, running) == 10, what="10 items read")

    # The grid: a row per job, a cell per business date, status as colour, symbol and word.
    dom = browser.dom(url + "/")
    for day in DATES:
        assert 'data-status="COMPLETED"' in cell(dom, "eod", day)
        assert "✓" in cell(dom, "eod", day)
    posting = cell(dom, "posting", DATES[-1])
    assert f'href="/executions/{failed["id"]}"' in posting
    assert "s-failed" in posting and "✗" in posting and "FAILED" in posting
    assert "▶" in cell(dom, "eod", "2026-11-21") and "STARTED" in cell(dom, "eod", "2026-11-21")
    assert "load: 10 read" in dom  # the running table
    # The hostile job's name is text on the page; its markup was not run.
    assert html.escape(HOSTILE_JOB, quote=False) in dom
    assert "<title>Overview · batchd</title>" in dom and "pwned" not in dom.split("<body")[0]
    assert "data-pwned" not in dom.split("<body")[1].split(">")[0]
    assert dom.count("<script") == 1  # the console's own refresh script only
    shot = browser.screenshot(url + "/", "web-overview.png")
    colours = png_colours(shot)
    # Each cell is about 30x30 pixels: 3 green days, 2 red failures, 1 blue running date
    # (plus the legend's squares).
    assert colours[GREEN] > 3 * 500 and colours[RED] > 2 * 500 and colours[BLUE] > 500

    # The running execution's progress bar moves as the step reads on.
    page = url + f"/executions/{running}"
    first = browser.dom(page)
    assert re.search(r'<progress class="step-progress" data-step="load" value="10" max="30"', first)
    assert "10 of about 30 items read" in first
    gate.write_text("20")
    wait_until(lambda: step_read(control, running) == 20, what="20 items read")
    second = browser.dom(page)
    assert re.search(
        r'<progress class="step-progress" data-step="load" value="20" max="30"', second
    )
    browser.screenshot(page, "web-execution-running.png")
    gate.write_text("30")
    control.wait_for_status(running, "COMPLETED")
    assert "<progress" not in browser.dom(page)

    # A failed run's page says why.
    failed_dom = browser.dom(url + f"/executions/{failed['id']}")
    assert re.search(
        r'<pre class="message" id="exit-message">[^<]*RuntimeError: ledger closed', failed_dom
    )
    # It ran in a worker process (the default isolation), whose log the page shows the end of.
    log_section = failed_dom.split("<h2>Log</h2>", 1)[1]
    assert "The end of <code>" in log_section and "ledger closed" in log_section
    hostile_dom = browser.dom(url + f"/executions/{hostile['id']}")
    assert html.escape(HOSTILE_MESSAGE, quote=False) in hostile_dom
    assert "<img" not in hostile_dom
    browser.screenshot(url + f"/executions/{hostile['id']}", "web-execution-failed.png")

    # A fire waiting for today's eod, and a file the watch took.
    control.call("fire", schedule="post")
    (tmp_path / "inbox" / "payments.csv").write_text("1\n")
    wait_until(
        lambda: control.call("executions", job="import_file")["executions"],
        what="the dropped file's execution",
    )
    (post,) = control.call("schedules")["schedules"]
    (waiting,) = post["waiting"]
    schedules = browser.dom(url + "/schedules")
    assert "◔</span> waiting</span>" in schedules
    assert f'eod <code>{{"date": "{waiting["business_date"]}"}}</code>' in schedules
    assert "5:00:00 after the fire" in schedules
    browser.screenshot(url + "/schedules", "web-schedules.png")
    watches = browser.dom(url + "/watches")
    assert "payments.csv" in watches and "started" in watches
    nodes = browser.dom(url + "/nodes")
    assert "(this one)" in nodes and "live" in nodes
