"""Files as GoBatch writes them: CSV/TSV without a header, checksum sidecars in md5, sha1,
sha256 and sha512, readers that require a checksum, and a done flag after publication."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchd.errors import ChecksumMismatch, ChecksumMissing
from batchd.items import CsvItemReader, CsvItemWriter, JsonLinesItemReader
from tests.items.helpers import make_ctx, persisted, read_all, run_writer


@dataclass
class Payment:
    id: int
    amount: str


ROWS = [{"id": 1, "amount": "9.50"}, {"id": 2, "amount": "12.00"}]


def test_headerless_csv_and_tsv_with_columns_from_a_model(tmp_path: Path) -> None:
    run_writer(CsvItemWriter(tmp_path / "p.csv", header=False, model=Payment), [ROWS])
    assert (tmp_path / "p.csv").read_text() == "1,9.50\n2,12.00\n"
    tsv = CsvItemWriter(tmp_path / "p.tsv", header=False, fields=["amount", "id"], delimiter="\t")
    run_writer(tsv, [ROWS[:1], ROWS[1:]])
    assert (tmp_path / "p.tsv").read_text() == "9.50\t1\n12.00\t2\n"


def test_sidecars_in_every_algorithm_and_readers_verify_them(tmp_path: Path) -> None:
    algorithms = ["md5", "sha1", "sha256", "sha512"]
    run_writer(CsvItemWriter(tmp_path / "p.csv", checksum=algorithms), [ROWS])
    content = (tmp_path / "p.csv").read_bytes()
    for algorithm in algorithms:
        digest = hashlib.new(algorithm, content).hexdigest()
        assert (tmp_path / f"p.csv.{algorithm}").read_text() == f"{digest}  p.csv\n"
    assert len(read_all(CsvItemReader(tmp_path / "p.csv", require_checksum="sha512"))) == 2
    (tmp_path / "p.csv.sha1").write_text(hashlib.sha1(b"other").hexdigest() + "  p.csv\n")
    with pytest.raises(ChecksumMismatch, match="sha1 sidecar"):
        read_all(CsvItemReader(tmp_path / "p.csv"))


def test_a_reader_that_requires_a_checksum_fails_without_its_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"v": 1}\n')
    # Without require_checksum a missing sidecar passes, as before.
    assert read_all(JsonLinesItemReader(path)) == [{"v": 1}]
    with pytest.raises(ChecksumMissing, match=r"in\.jsonl has no checksum sidecar beside it"):
        copy.copy(JsonLinesItemReader(path, require_checksum=True)).open(make_ctx())
    (tmp_path / "in.jsonl.md5").write_text(hashlib.md5(path.read_bytes()).hexdigest())
    assert read_all(JsonLinesItemReader(path, require_checksum=True)) == [{"v": 1}]
    with pytest.raises(ChecksumMissing, match=r"in\.jsonl\.sha256"):
        copy.copy(JsonLinesItemReader(path, require_checksum="sha256")).open(make_ctx())
    with pytest.raises(ValueError, match="checksum algorithms are"):
        CsvItemWriter(tmp_path / "x.csv", checksum="crc32")


def test_the_done_flag_appears_after_publication_and_goes_while_the_output_is_rewritten(
    tmp_path: Path,
) -> None:
    path, flag = tmp_path / "p.csv", tmp_path / "p.csv.ok"
    writer = copy.copy(CsvItemWriter(path, done_flag=True))
    ctx = make_ctx()
    writer.open(ctx)
    writer.write(ROWS)
    writer.update(ctx)
    assert not flag.exists() and not path.exists()
    writer.complete(ctx)
    writer.close()
    assert flag.exists() and flag.read_bytes() == b""
    # A crash after publication, before the step's end was recorded: the restart takes the
    # file back, and the flag goes first, until the file is published again.
    again = copy.copy(CsvItemWriter(path, done_flag=True))
    resumed = persisted(ctx)
    again.open(resumed)
    assert not flag.exists() and not path.exists()
    again.complete(resumed)
    again.close()
    assert flag.exists() and path.read_text() == "id,amount\n1,9.50\n2,12.00\n"
    run_writer(CsvItemWriter(tmp_path / "q.csv", done_flag=".done"), [ROWS])
    assert (tmp_path / "q.csv.done").exists()
