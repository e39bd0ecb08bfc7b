"""The job repository: tables, migrations and :class:`SqlJobRepository`."""

from batchd.repository.connect import create_database_engine, parse_database_url
from batchd.repository.job_repository import Owner, SqlJobRepository, StepHistory, utc_now
from batchd.repository.status_history import StatusChange
from batchd.repository.steps import StepEnd
from batchd.repository.triggers import TriggerStore

__all__ = [
    "Owner",
    "SqlJobRepository",
    "StatusChange",
    "StepEnd",
    "StepHistory",
    "TriggerStore",
    "create_database_engine",
    "parse_database_url",
    "utc_now",
]
