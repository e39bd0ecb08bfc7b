"""Fixtures of the web console's tests: a repository with runs of the test jobs, and the
console serving it in this process."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batchd import JobOperator, SqlJobRepository
from batchd.daemon.settings import Settings
from batchd.shortcuts import default_registry
from batchd.web import Pages, ReadOnlyStore, WebConsole
from tests.daemon.support import daemons
from tests.web import web_jobs
from tests.web.browser import browser

__all__ = ["browser", "daemons"]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(url: str, *, accept: str | None = None, method: str = "GET") -> Answer:
    request = urllib.request.Request(url, method=method)
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read())


@dataclass
class Served:
    """A repository, an operator on it, and the console serving it at ``url``."""

    url: str
    database_url: str
    operator: JobOperator
    pages: Pages
    settings: Settings

    def get(self, path: str, **options: Any) -> Answer:
        return fetch(self.url + path, **options)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """``serve(database_url=None, log_dir=None)``: run the console on port 0."""
    started: list[tuple[WebConsole, SqlJobRepository, JobOperator]] = []
    assert web_jobs.HOSTILE_JOB in default_registry.names()

    def start(database_url: str | None = None, log_dir: Path | None = None) -> Served:
        url = database_url or f"sqlite:///{tmp_path / 'batchd.db'}"
        repository = SqlJobRepository(url)
        operator = JobOperator(repository=repository, registry=default_registry)
        settings = Settings(database_url=url, node="web-test")
        pages = Pages(ReadOnlyStore(url), lambda: settings, log_dir=lambda: log_dir)
        console = WebConsole(pages, "127.0.0.1:0")
        console.start()
        started.append((console, repository, operator))
        return Served(f"http://127.0.0.1:{console.port}", url, operator, pages, settings)

    yield start
    for console, repository, operator in started:
        console.stop()
        operator.shutdown()
        repository.dispose()
