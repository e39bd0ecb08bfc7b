"""GoBatch-style module functions on one default operator.

Job modules call :func:`register` at import time, before anything is configured; the
operator is created on first use from :func:`configure` (or a SQLite file ``batchd.db`` in
the working directory).
"""

from __future__ import annotations

import threading

from batchd.engine import Job, JobOperator, JobRegistry
from batchd.model import JobExecution, RawParams
from batchd.repository import SqlJobRepository

DEFAULT_DATABASE_URL = "sqlite:///batchd.db"

default_registry = JobRegistry()
_operator: JobOperator | None = None
_lock = threading.Lock()


def configure(
    database_url: str = DEFAULT_DATABASE_URL, *, max_concurrent_jobs: int = 4
) -> JobOperator:
    """(Re)create the default operator on ``database_url``; registered jobs are kept."""
    global _operator
    with _lock:
        if _operator is not None:
            _operator.shutdown()
            _operator.repository.dispose()
        _operator = JobOperator(
            SqlJobRepository(database_url),
            default_registry,
            max_concurrent_jobs=max_concurrent_jobs,
        )
        return _operator


def default_operator() -> JobOperator:
    with _lock:
        existing = _operator
    return existing if existing is not None else configure()


def register(job: Job) -> Job:
    """Register ``job`` with the default registry (what a jobs module does at import)."""
    return default_registry.register(job)


def start(job_name: str, params: RawParams = None) -> JobExecution:
    return default_operator().start(job_name, params)


def start_async(job_name: str, params: RawParams = None) -> JobExecution:
    return default_operator().start_async(job_name, params)


def stop(job_or_id: str | int) -> list[JobExecution]:
    return default_operator().stop(job_or_id)


def restart(job_or_id: str | int) -> JobExecution:
    return default_operator().restart(job_or_id)
