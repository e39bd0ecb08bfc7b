"""etc/prometheus and the Grafana dashboard, checked by Prometheus's own promtool: the rules
load, the example prometheus.yml loads them, and the alerts' unit tests
(etc/prometheus/batchd-alerts.test.yml) pass. `make test` installs promtool (Debian package
prometheus) as root; with CI=true a missing promtool fails instead of skipping."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.test_metrics import (
    DASHBOARD,
    dashboard_expressions,
    exported_sample_names,
    referenced_metrics,
)

PROMETHEUS = Path(__file__).resolve().parent.parent / "etc" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not installed (Debian package prometheus; make test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the promtool tests: {reason}")
        pytest.skip(reason)
    return found


def run_promtool(promtool: str, *args: str) -> str:
    done = subprocess.run(
        [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_checks_the_alert_rules(promtool: str) -> None:
    assert "SUCCESS" in run_promtool(promtool, "check", "rules", "batchd-alerts.yml")


def test_the_example_prometheus_config_loads_the_rules(promtool: str) -> None:
    out = run_promtool(promtool, "check", "config", "prometheus.yml")
    assert "1 rule files found" in out and "batchd-alerts.yml" in out


def test_the_alerts_fire_when_they_should(promtool: str) -> None:
    tests = (PROMETHEUS / "batchd-alerts.test.yml").read_text()
    for alert in ("BatchdDown", "BatchdAbsent", "BatchdJobLastExecutionFailed",
                  "BatchdJobSuccessTooOld", "BatchdScheduleStuck", "BatchdWatchFilesRejected",
                  "BatchdDatabaseUnreachable", "BatchdClockSkew", "BatchdNodeLost",
                  "BatchdScheduleLate"):
        assert f"alertname: {alert}\n" in tests, f"no unit test of {alert}"
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", "batchd-alerts.test.yml")


def panels_by_title() -> dict[str, dict[str, Any]]:
    return {panel["title"]: panel for panel in json.loads(DASHBOARD.read_text())["panels"]}


def test_dashboard_shows_database_clock_skew_and_live_nodes() -> None:
    panels = panels_by_title()
    exported = exported_sample_names()
    for title, metric in (("Database up", "batchd_database_up"),
                          ("Clock skew", "batchd_clock_skew_seconds"),
                          ("Live nodes", "batchd_nodes_live")):
        expressions = list(dashboard_expressions(panels[title]))
        used = set().union(*(referenced_metrics(expression) for expression in expressions))
        assert metric in used and used <= exported, (title, used)


def test_dashboard_rates_use_the_rate_interval() -> None:
    """$__interval can be shorter than two scrapes: increase() over it shows gaps or nothing."""
    expressions = list(dashboard_expressions(json.loads(DASHBOARD.read_text())))
    heatmap = panels_by_title()["Job duration (heatmap)"]
    assert all("[$__rate_interval]" in expr for expr in dashboard_expressions(heatmap))
    assert not [expr for expr in expressions if "[$__interval]" in expr]
