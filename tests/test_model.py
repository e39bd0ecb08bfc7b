"""Statuses, parameters and job keys."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import BaseModel

from batchd import BatchStatus
from batchd.errors import InvalidJobParameters
from batchd.model import build_parameters, job_key


class EodParams(BaseModel):
    date: dt.date
    region: str = "eu"


def test_status_value_equals_name_and_is_a_str() -> None:
    assert BatchStatus.COMPLETED == "COMPLETED"
    assert BatchStatus("FAILED") is BatchStatus.FAILED


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], BatchStatus.COMPLETED),
        ([BatchStatus.COMPLETED, BatchStatus.COMPLETED], BatchStatus.COMPLETED),
        ([BatchStatus.COMPLETED, BatchStatus.STARTED], BatchStatus.STARTED),
        ([BatchStatus.STOPPED, BatchStatus.STOPPING], BatchStatus.STOPPED),
        ([BatchStatus.FAILED, BatchStatus.STOPPED, BatchStatus.COMPLETED], BatchStatus.FAILED),
        ([BatchStatus.ABANDONED, BatchStatus.FAILED], BatchStatus.ABANDONED),
        ([BatchStatus.UNKNOWN, BatchStatus.ABANDONED], BatchStatus.UNKNOWN),
        ([BatchStatus.STARTING, BatchStatus.COMPLETED], BatchStatus.STARTING),
    ],
)
def test_worst_status_wins(statuses: list[BatchStatus], expected: BatchStatus) -> None:
    assert BatchStatus.worst(statuses) is expected


def test_key_order_does_not_change_the_job_key() -> None:
    a = build_parameters("j", {"date": "2026-11-21", "region": "eu"})
    b = build_parameters("j", '{"region": "eu", "date": "2026-11-21"}')
    assert a.job_key == b.job_key
    assert a.job_key == job_key({"date": "2026-11-21", "region": "eu"})
    assert len(a.job_key) == 64


def test_another_date_is_another_key() -> None:
    assert (
        build_parameters("j", {"date": "2026-11-21"}).job_key
        != build_parameters("j", {"date": "2026-11-22"}).job_key
    )


def test_non_identifying_parameters_do_not_change_the_key() -> None:
    one = build_parameters("j", {"date": "2026-11-21", "run_id": 1}, non_identifying={"run_id"})
    two = build_parameters("j", {"date": "2026-11-21", "run_id": 2}, non_identifying={"run_id"})
    assert one.job_key == two.job_key
    assert one.values == {"date": "2026-11-21", "run_id": 1}
    assert one.identifying == {"date": "2026-11-21"}


def test_params_model_types_values_and_fills_defaults_before_keying() -> None:
    explicit = build_parameters("eod", {"date": "2026-11-21", "region": "eu"}, model=EodParams)
    defaulted = build_parameters("eod", {"date": "2026-11-21"}, model=EodParams)
    assert explicit.job_key == defaulted.job_key
    assert defaulted.typed.date == dt.date(2026, 11, 21)
    assert defaulted.values == {"date": "2026-11-21", "region": "eu"}


def test_params_model_error_names_the_field() -> None:
    with pytest.raises(InvalidJobParameters, match=r"'eod'.*date: .*date"):
        build_parameters("eod", {"date": "yesterday"}, model=EodParams)
    with pytest.raises(InvalidJobParameters, match="date: Field required"):
        build_parameters("eod", {}, model=EodParams)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"date": ', "not valid JSON"),
        ("[1, 2]", "must be a JSON object, not list"),
        ('"2026-11-21"', "must be a JSON object, not str"),
        ({"when": object()}, "not JSON-serialisable"),
        ({1: "x"}, "names must be strings"),
    ],
)
def test_bad_parameters_are_refused_with_a_clear_error(raw: object, message: str) -> None:
    with pytest.raises(InvalidJobParameters, match=message):
        build_parameters("j", raw)  # type: ignore[arg-type]
