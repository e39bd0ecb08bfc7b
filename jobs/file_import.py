"""File import: a dropped payments file is loaded into the ``payments`` table.

Fired by the ``payments`` watch (``etc/batchd.toml``) with ``file = "{path}"``. Rows go to
the repository's database (``BATCHD_DATABASE_URL``) in each chunk's own transaction, keyed
by ``payment_id`` (upsert), so a re-run never doubles a payment. A malformed line is skipped
and counted (up to 100), not fatal.

The reader's ``"{file}"`` reaches the dropped file because the daemon makes each watch's
directory an input directory; a ``file`` anywhere else (from ``batchd ctl start`` or a trigger
file's content) fails the execution with ``InvalidJobParameters`` before anything is read.
"""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal

from pydantic import BaseModel
from sqlalchemy import Column, Date, MetaData, Numeric, String, Table

import batchd
from batchd import JobBuilder, StepBuilder, StepContext
from batchd.items import CsvItemReader, SqlItemWriter
from batchd.items.sql_items import engine_for

DATABASE_URL = os.environ.get("BATCHD_DATABASE_URL", "sqlite:///batchd.db")

payments = Table(
    "payments",
    MetaData(),
    Column("payment_id", String(64), primary_key=True),
    Column("value_date", Date, nullable=False),
    Column("debtor", String(34), nullable=False),
    Column("creditor", String(34), nullable=False),
    Column("amount", Numeric(18, 2), nullable=False),
    Column("source_file", String(500), nullable=False),
)


class ImportParams(BaseModel):
    file: str


class Payment(BaseModel):
    payment_id: str
    value_date: dt.date
    debtor: str
    creditor: str
    amount: Decimal


def create_table(ctx: StepContext) -> None:
    payments.metadata.create_all(engine_for(DATABASE_URL))


class WithSource:
    """Adds the file name to each payment row."""

    def open(self, ctx: batchd.ExecutionContext) -> None:
        self.source = os.path.basename(ctx.params.file)

    def process(self, payment: Payment) -> dict[str, object]:
        return {**payment.model_dump(), "source_file": self.source}


file_import = batchd.register(
    JobBuilder("file_import")
    .params_model(ImportParams)
    .step(StepBuilder("create_table").tasklet(create_table).allow_start_if_complete().build())
    .step(
        StepBuilder("load_payments")
        .reader(CsvItemReader("{file}", model=Payment))
        .processor(WithSource())
        .writer(SqlItemWriter(DATABASE_URL, payments, upsert_on=["payment_id"]))
        .chunk_size(1000)
        .skip(on=ValueError, limit=100)
        .build()
    )
    .build()
)
