"""End-of-day posting, the classic nightly batch.

For one business ``date``: post that day's transactions (``transactions_YYYYMMDD.csv`` in
``data_dir``) to the ``ledger`` table, then write the day's balances per account to
``balances_YYYYMMDD.csv`` in ``out_dir``. The ledger lives in the repository's database
(``BATCHD_DATABASE_URL``), so each chunk's rows commit together with its checkpoint:
a crash or a restart never posts a transaction twice.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Column, Date, MetaData, Numeric, String, Table, func, select

import batchd
from batchd import ExecutionContext, JobBuilder, StepBuilder, StepContext
from batchd.items import CsvItemReader, SqlItemWriter, trusted_path
from batchd.items.sql_items import engine_for

DATABASE_URL = os.environ.get("BATCHD_DATABASE_URL", "sqlite:///batchd.db")

ledger = Table(
    "ledger",
    MetaData(),
    Column("txn_id", String(64), primary_key=True),
    Column("business_date", Date, nullable=False, index=True),
    Column("account", String(34), nullable=False),
    Column("amount", Numeric(18, 2), nullable=False),
    Column("currency", String(3), nullable=False),
)


class EodParams(BaseModel):
    """The parameters of one run; only ``date`` matters to identify it in practice."""

    date: dt.date
    data_dir: str = "data"
    out_dir: str = "out"


class Transaction(BaseModel):
    """One line of the transactions file."""

    txn_id: str
    account: str
    amount: Decimal
    currency: str


def create_ledger(ctx: StepContext) -> None:
    """Create the ledger table if it does not exist yet."""
    ledger.metadata.create_all(engine_for(DATABASE_URL))


class ToLedgerRow:
    """Turns a transaction into a ledger row for the run's business date."""

    def open(self, ctx: ExecutionContext) -> None:
        self.business_date: dt.date = ctx.params.date

    def process(self, txn: Transaction) -> dict[str, Any]:
        return {**txn.model_dump(), "business_date": self.business_date}


def write_balances(ctx: StepContext) -> None:
    """Sum the day's ledger rows per account into the balances report (atomic rename)."""
    params: EodParams = ctx.params
    query = (
        select(ledger.c.account, ledger.c.currency, func.sum(ledger.c.amount))
        .where(ledger.c.business_date == params.date)
        .group_by(ledger.c.account, ledger.c.currency)
        .order_by(ledger.c.account, ledger.c.currency)
    )
    with engine_for(DATABASE_URL).connect() as conn:
        rows = conn.execute(query).all()
    out = Path(params.out_dir) / f"balances_{params.date:%Y%m%d}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    with open(partial, "w", newline="", encoding="utf-8") as report:
        writer = csv.writer(report)
        writer.writerow(["account", "currency", "balance"])
        for account, currency, total in rows:
            writer.writerow([account, currency, f"{Decimal(total):.2f}"])
    os.replace(partial, out)
    ctx.step_context["accounts"] = len(rows)


end_of_day = batchd.register(
    JobBuilder("end_of_day")
    .params_model(EodParams)
    .step(StepBuilder("create_ledger").tasklet(create_ledger).allow_start_if_complete().build())
    .step(
        StepBuilder("post_transactions")
        # data_dir comes from the schedule in the daemon's config: trusted to point anywhere.
        .reader(
            CsvItemReader(
                trusted_path("{data_dir}/transactions_{date:%Y%m%d}.csv", "data_dir"),
                model=Transaction,
            )
        )
        .processor(ToLedgerRow())
        .writer(SqlItemWriter(DATABASE_URL, ledger, upsert_on=["txn_id"]))
        .chunk_size(500)
        .skip(on=ValueError, limit=10)  # a malformed line is skipped, counted and reported
        .build()
    )
    .step(StepBuilder("write_balances").tasklet(write_balances).build())
    .build()
)
