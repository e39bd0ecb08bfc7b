"""The web console's pages over HTTP, in this process: what they show as HTML and JSON, the
answers to malformed requests, escaping, and that nothing is written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from batchd.daemon.config import load_settings
from batchd.errors import ConfigError
from batchd.web import ReadOnlyStore
from tests.daemon.support import table_counts
from tests.web.conftest import Served, fetch
from tests.web.web_jobs import HOSTILE_JOB, HOSTILE_MESSAGE

PAGES = ("/", "/schedules", "/watches", "/nodes")
DATES = [f"2026-11-{day:02d}" for day in range(2, 21)]  # 19 dates: the grid shows 14


def run_history(served: Served) -> dict[str, int]:
    """eod for every date, posting failing on one, the hostile job failing: their ids."""
    op = served.operator
    ids = {}
    for day in DATES:
        ids[f"eod {day}"] = op.start("eod", {"date": day, "items": 25}).id
    ids["posting"] = op.start("posting", {"date": DATES[-1], "why": "ledger closed"}).id
    ids["hostile"] = op.start(HOSTILE_JOB, {"date": DATES[-2], "why": HOSTILE_MESSAGE}).id
    return ids


def test_overview_grid_shows_each_job_by_business_date(serve) -> None:
    served = serve()
    ids = run_history(served)
    # A job without a date parameter is placed on the day it was created.
    undated = served.operator.start("import_file", {}).id

    grid = served.get("/?format=json").json()
    same = served.get("/", accept="application/json").json()
    assert same["jobs"] == grid["jobs"]
    today = served.operator.get_execution(undated).create_time.date().isoformat()
    assert grid["dates"] == sorted({*DATES, today})[-14:]
    rows = {row["name"]: row["cells"] for row in grid["jobs"]}
    assert set(rows) == {"eod", "posting", HOSTILE_JOB, "import_file"}
    eod = {cell["date"]: cell for cell in rows["eod"]}
    assert eod[DATES[-1]]["status"] == "COMPLETED"
    assert eod[DATES[-1]]["id"] == ids[f"eod {DATES[-1]}"]
    posting = {cell["date"]: cell for cell in rows["posting"]}
    assert posting[DATES[-1]] == {
        "date": DATES[-1],
        "id": ids["posting"],
        "status": "FAILED",
        "attempts": 1,
        "exit_message": "step 'post' FAILED: RuntimeError: ledger closed",
    }
    assert posting[DATES[-2]]["id"] is None
    assert [cell["status"] for cell in rows["import_file"] if cell["id"]] == ["COMPLETED"]
    assert [failure["id"] for failure in grid["failures"]] == [ids["hostile"], ids["posting"]]

    html = served.get("/").text
    assert f'href="/executions/{ids["posting"]}"' in html
    assert "ledger closed" in html
    # 14 columns of dates, and each status also as a symbol and a word (not colour alone).
    assert len(re.findall(r'<th scope="col" class="date">', html)) == 14
    assert re.search(r'class="cell s-failed"[^>]*data-status="FAILED"', html)
    symbol_and_word = (
        r'title="[-0-9]+: FAILED[^"]*"><span aria-hidden="true">✗</span><span class="sr">FAILED'
    )
    assert re.search(symbol_and_word, html)


def test_every_page_on_sqlite_and_postgresql(serve, database_url: str) -> None:
    served = serve(database_url)
    ids = run_history(served)
    undated = served.operator.start("import_file", {}).id
    grid = served.get("/?format=json").json()
    today = served.operator.get_execution(undated).create_time.date().isoformat()
    assert grid["dates"] == sorted({*DATES, today})[-14:]
    rows = {row["name"]: {c["date"]: c["status"] for c in row["cells"]} for row in grid["jobs"]}
    assert rows["posting"][DATES[-1]] == "FAILED" and rows["eod"][DATES[-3]] == "COMPLETED"
    assert rows["import_file"][today] == "COMPLETED"
    page = served.get(f"/executions/{ids['posting']}?format=json").json()
    assert page["execution"]["exit_message"].startswith("step 'post' FAILED")
    for path in PAGES:
        assert served.get(path).status == 200, path


def test_overview_business_date_moves_with_the_date_parameter(serve) -> None:
    served = serve()
    first = served.operator.start("posting", {"date": "2026-11-20"}).id
    again = served.operator.restart(first).id  # a restart of the same date: one cell, 2 runs
    grid = served.get("/?format=json").json()
    (cell,) = [c for row in grid["jobs"] for c in row["cells"] if row["name"] == "posting"]
    assert (cell["id"], cell["attempts"]) == (again, 2)
    assert grid["dates"] == ["2026-11-20"]
    assert served.get("/?days=1&format=json").json()["dates"] == ["2026-11-20"]


def test_overview_reads_pages_of_executions_until_the_dates_settle(serve, monkeypatch) -> None:
    served = serve()
    run_history(served)
    whole = served.get("/?format=json").json()
    # Pages of 3 ids: the grid is read in many pages, newest first, and comes out the same.
    monkeypatch.setattr("batchd.web.pages.GRID_PAGE", 3)
    paged = served.get("/?format=json").json()
    assert (paged["dates"], paged["jobs"]) == (whole["dates"], whole["jobs"])
    # At most GRID_WINDOW ids are read: a long history costs no more than a short one.
    monkeypatch.setattr("batchd.web.pages.GRID_WINDOW", 6)
    bounded = served.get("/?format=json").json()
    assert bounded["dates"] == DATES[-4:]  # ids 16..21: eod of 4 dates, posting, hostile


def test_execution_page_shows_steps_counters_and_exit_message(serve) -> None:
    served = serve()
    ids = run_history(served)
    done = served.get(f"/executions/{ids['eod ' + DATES[0]]}?format=json").json()
    assert done["execution"]["status"] == "COMPLETED"
    (step,) = done["execution"]["steps"]
    assert (step["name"], step["read_count"], step["write_count"]) == ("load", 25, 25)
    assert step["commit_count"] == 3 and step["progress"] is None
    failed = served.get(f"/executions/{ids['posting']}").text
    assert "RuntimeError: ledger closed" in failed
    assert "No log is kept" in failed


def test_malformed_and_unknown_requests(serve) -> None:
    served = serve()
    run_history(served)
    assert served.get("/executions/abc").status == 400
    assert served.get("/executions/-1").status == 400
    assert served.get("/executions/1.5").status == 400
    assert served.get("/executions/%31").status == 400  # ids are plain digits
    assert served.get("/executions/99999999999999999999").status == 404  # beyond BIGINT
    assert served.get("/executions/" + "9" * 5000).status == 404
    answer = served.get("/executions/424242", accept="application/json")
    assert answer.status == 404
    assert answer.json() == {
        "error": {
            "page": "error",
            "status": 404,
            "reason": "Not Found",
            "message": "no job execution with id 424242",
        }
    }
    assert served.get("/" + "x" * 20000).status == 404
    assert served.get("/?days=NaN").status == 400
    assert served.get("/?days=0").status == 400
    assert served.get("/?days=1e3").status == 400
    assert served.get("/?format=xml").status == 400
    assert served.get("/?" + "&".join(f"a{i}=1" for i in range(50))).status == 400
    assert served.get("/static/../pages.py").status == 404
    assert served.get("/static/console.css").status == 200
    refused = served.get("/", method="POST")
    assert refused.status == 405 and refused.headers["Allow"] == "GET, HEAD"
    # The daemon's pages still answer after all that.
    assert served.get("/").status == 200


def test_everything_shown_is_escaped(serve) -> None:
    served = serve()
    ids = run_history(served)
    served.operator.start("eod", {"date": "2026-11-21", "note": "<b>bold</b>", "items": 1})
    for path in ("/", f"/executions/{ids['hostile']}"):
        html = served.get(path).text
        assert "<script>document.title" not in html
        assert "<img src=x" not in html
        assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in html
        assert "&lt;img src=x onerror=" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in served.get("/executions/" + str(ids["hostile"] + 1)).text
    headers = served.get("/").headers
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_log_tail_only_when_a_log_file_exists(serve, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    served = serve(log_dir=logs)
    ids = run_history(served)
    page = served.get(f"/executions/{ids['posting']}?format=json").json()
    assert page["log"]["kept"] is True and page["log"]["text"] is None
    log_file = logs / "posting" / f"{ids['posting']}.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text("".join(f"line {n}\n" for n in range(5000)) + "<b>last</b>\n")
    page = served.get(f"/executions/{ids['posting']}?format=json").json()["log"]
    assert page["truncated"] is True and page["text"].endswith("line 4999\n<b>last</b>\n")
    assert "&lt;b&gt;last&lt;/b&gt;" in served.get(f"/executions/{ids['posting']}").text
    # A job name is not a path: the hostile job's log would be outside the directory.
    hostile = served.get(f"/executions/{ids['hostile']}?format=json").json()["log"]
    assert hostile["text"] is None


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_console_connection_cannot_write(database: str, request) -> None:
    url = request.getfixturevalue("sqlite_url" if database == "sqlite" else "pg_url")
    from batchd import SqlJobRepository

    SqlJobRepository(url).dispose()  # the schema, made by a writer
    store = ReadOnlyStore(url)
    try:
        for statement in ("DELETE FROM batch_node", "CREATE TABLE intruder (id INTEGER)"):
            with pytest.raises(DBAPIError, match=r"(?i)read.?only"), store.engine.begin() as conn:
                conn.execute(text(statement))
    finally:
        store.dispose()


def test_loading_every_page_changes_no_row_count(serve, tmp_path: Path) -> None:
    served = serve()
    ids = run_history(served)
    before = table_counts(tmp_path / "batchd.db")
    for path in (*PAGES, *(f"/executions/{i}" for i in ids.values()), "/executions/999"):
        served.get(path)
        served.get(path + "?format=json")
    assert table_counts(tmp_path / "batchd.db") == before


def test_queries_use_the_indexes(serve) -> None:
    served = serve()
    run_history(served)
    store = served.pages.store
    plan = store.explain(store.grid_query(1000, 100))
    assert any("INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in line for line in plan), plan
    assert not any(line.startswith("SCAN batch_job_execution") for line in plan), plan
    running = store.explain(store.running_query())
    assert any("uq_job_execution_running" in line for line in running), running
    names = store.explain(store.job_names_query())
    # (SQLite's name for the unique key of (job_name, job_key))
    assert any("COVERING INDEX sqlite_autoindex_batch_job_instance" in line for line in names)
    assert not any(line.startswith("SCAN batch_job_instance") for line in names), names


def test_web_settings_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "batchd.toml"
    config.write_text('[web]\nlisten = "localhost"\n')
    with pytest.raises(ConfigError, match=r"web\.listen"):
        load_settings(config, env={})
    config.write_text('[web]\nlisten = "127.0.0.1:9465"\n')
    assert load_settings(config, env={}).web.listen == "127.0.0.1:9465"
    config.write_text("")
    assert load_settings(config, env={}).web.listen is None  # off by default


def test_batchd_web_serves_the_repository_of_a_config(serve, tmp_path: Path) -> None:
    served = serve()
    ids = run_history(served)
    config = tmp_path / "web.toml"
    config.write_text(
        f'database_url = "{served.database_url}"\njobs = ["no.such.module"]\n'
        '[web]\nlisten = "127.0.0.1:0"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchd.cli", "web", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line, seen = "", []
        while "web console on" not in line:
            line = proc.stderr.readline()
            seen.append(line)
            assert line, f"batchd web ended ({proc.wait()}) before it served: {seen}"
        url = re.search(r"http://\S+/", line).group(0).rstrip("/")  # type: ignore[union-attr]
        page = fetch(f"{url}/executions/{ids['posting']}?format=json").json()
        assert page["execution"]["status"] == "FAILED"
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    config.write_text(f'database_url = "{served.database_url}"\n')
    off = subprocess.run(
        [sys.executable, "-m", "batchd.cli", "web", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert off.returncode == 78 and "web console is off" in off.stderr
