"""Checksum sidecars beside input files are verified before the first item is read."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest

from batchd.errors import BatchError, ChecksumMismatch
from batchd.items import CsvItemReader, FixedWidthItemReader, JsonLinesItemReader
from tests.items.helpers import make_ctx, read_all

READERS = {
    "csv": lambda p: CsvItemReader(p),
    "jsonl": lambda p: JsonLinesItemReader(p),
    "fixed": lambda p: FixedWidthItemReader(p, [("v", 10)]),
}
CONTENT = {"csv": b"v\n1\n2\n", "jsonl": b'{"v": 1}\n{"v": 2}\n', "fixed": b"1\n2\n"}


@pytest.mark.parametrize("kind", sorted(READERS))
@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_sidecar_verified(kind: str, algorithm: str, tmp_path: Path) -> None:
    path = tmp_path / "input.dat"
    path.write_bytes(CONTENT[kind])
    digest = hashlib.new(algorithm, CONTENT[kind]).hexdigest()
    sidecar = tmp_path / f"input.dat.{algorithm}"
    sidecar.write_text(f"{digest.upper()}  input.dat\n")  # case does not matter
    assert len(read_all(READERS[kind](path))) == 2

    wrong = hashlib.new(algorithm, b"something else").hexdigest()
    sidecar.write_text(f"{wrong}  input.dat\n")
    reader = copy.copy(READERS[kind](path))
    with pytest.raises(ChecksumMismatch) as caught:
        reader.open(make_ctx())
    error = caught.value
    assert isinstance(error, BatchError)
    assert (error.expected, error.actual) == (wrong, digest)
    message = str(error)
    assert str(path) in message and wrong in message and digest in message
    assert f"input.dat.{algorithm}" in message


def test_empty_sidecar_is_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"v\n1\n")
    (tmp_path / "in.csv.sha256").write_text("")
    with pytest.raises(ChecksumMismatch, match="empty sidecar"):
        copy.copy(CsvItemReader(path)).open(make_ctx())
