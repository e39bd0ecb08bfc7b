"""Item throughput: batchd's file readers and writers against the stdlib loop doing the same
parsing and typing, in the same run (alternating), outside any step (no repository).

Cases (``--rows`` records of ``id,name,city,amount``):

- ``csv read``: ``CsvItemReader`` (dicts) vs ``csv.reader`` + ``dict(zip(header, row))``;
- ``csv read (model)``: ``CsvItemReader(model=Row)`` (a dataclass: int, str, str, float) vs
  the same loop building ``Row(int(...), ..., float(...))``;
- ``csv write``: ``CsvItemWriter`` (``fsync=False``), chunks of 1,000 dicts, then
  ``complete`` vs ``csv.writer`` of the dicts' values, then ``os.replace``;
- ``jsonl read`` / ``jsonl write``: ``JsonLinesItemReader`` / ``JsonLinesItemWriter`` vs
  ``json.loads`` / ``json.dumps`` per line;
- ``fixed read`` / ``fixed write``: ``FixedWidthItemReader`` / ``FixedWidthItemWriter``
  (int, str, str, float columns) vs slicing, ``strip`` and ``int``/``float`` / an f-string
  padding each field per line.

The reader runs read as a chunk step without retry or skip does (``read_many`` when the
reader has it, else ``read()`` per item) and take the checkpoint a step would take once per
1,000 items (``update(ctx)``). Target (issue): ratio <= 1.5 in every case.

    .venv/bin/python bench/items_throughput.py
    .venv/bin/python bench/items_throughput.py --rows 50000 --repeat 3 --profile "csv read"
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit
from chunk_throughput import generate_csv

from batchd import items
from batchd.model import ExecutionContext

TARGET = 1.5
CHUNK = 1000
WIDTHS = (("id", 8, int), ("name", 40, str), ("city", 20, str), ("amount", 12, float))


@dataclass
class Row:
    id: int
    name: str
    city: str
    amount: float


def read_all(reader: Any) -> int:
    """Every item, as a chunk step without retry or skip reads them: a chunk at a time
    through ``read_many`` when the reader has it, else one ``read()`` per item."""
    ctx = ExecutionContext()
    reader.open(ctx)
    n = 0
    read_many = getattr(reader, "read_many", None)
    while read_many is not None and (chunk := read_many(CHUNK)):
        n += len(chunk)
        if n % CHUNK == 0:
            reader.update(ctx)
    while read_many is None and reader.read() is not None:
        n += 1
        if n % CHUNK == 0:
            reader.update(ctx)
    reader.update(ctx)
    reader.close()
    return n


def write_all(writer: Any, records: list[dict[str, Any]]) -> None:
    ctx = ExecutionContext()
    writer.open(ctx)
    for start in range(0, len(records), CHUNK):
        writer.write(records[start : start + CHUNK])
        writer.update(ctx)
    writer.complete(ctx)
    writer.close()


def cases(tmp: Path, rows: int) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    source = tmp / "input.csv"
    generate_csv(source, rows)
    with open(source, newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    jsonl = tmp / "input.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    fixed = tmp / "input.txt"
    with open(fixed, "w", encoding="utf-8") as f:
        for r in records:
            f.write(f"{r['id']:>8}{r['name']:<40}{r['city']:<20}{r['amount']:>12}\n")

    def csv_loop(model: bool) -> int:
        n = 0
        with open(source, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            for row in reader:
                if model:
                    Row(int(row[0]), row[1], row[2], float(row[3]))
                else:
                    dict(zip(header, row))  # noqa: B905
                n += 1
        return n

    def csv_write_loop() -> None:
        partial = tmp / ".out_floor.csv.partial"
        with open(partial, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(list(records[0]))
            writer.writerows(r.values() for r in records)
        os.replace(partial, tmp / "out_floor.csv")

    def jsonl_loop() -> int:
        n = 0
        with open(jsonl, encoding="utf-8") as f:
            for text in f:
                json.loads(text)
                n += 1
        return n

    def jsonl_write_loop() -> None:
        partial = tmp / ".out_floor.jsonl.partial"
        with open(partial, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        os.replace(partial, tmp / "out_floor.jsonl")

    typed = [
        {"id": int(r["id"]), "name": r["name"], "city": r["city"], "amount": float(r["amount"])}
        for r in records
    ]

    def fixed_write_loop() -> None:
        partial = tmp / ".out_floor.txt.partial"
        with open(partial, "w", encoding="utf-8") as f:
            for r in typed:
                f.write(f"{r['id']:>8}{r['name']:<40}{r['city']:<20}{r['amount']:>12}\n")
        os.replace(partial, tmp / "out_floor.txt")

    def fixed_loop() -> int:
        n = 0
        with open(fixed, encoding="utf-8") as f:
            for text in f:
                {
                    "id": int(text[0:8].strip()),
                    "name": text[8:48].strip(),
                    "city": text[48:68].strip(),
                    "amount": float(text[68:80].strip()),
                }
                n += 1
        return n

    return {
        "csv read": (lambda: read_all(items.CsvItemReader(source)), lambda: csv_loop(False)),
        "csv read (model)": (
            lambda: read_all(items.CsvItemReader(source, model=Row)),
            lambda: csv_loop(True),
        ),
        "csv write": (
            lambda: write_all(items.CsvItemWriter(str(tmp / "out.csv"), fsync=False), records),
            csv_write_loop,
        ),
        "jsonl read": (lambda: read_all(items.JsonLinesItemReader(jsonl)), jsonl_loop),
        "jsonl write": (
            lambda: write_all(
                items.JsonLinesItemWriter(str(tmp / "out.jsonl"), fsync=False), records
            ),
            jsonl_write_loop,
        ),
        "fixed read": (lambda: read_all(items.FixedWidthItemReader(fixed, WIDTHS)), fixed_loop),
        "fixed write": (
            lambda: write_all(
                items.FixedWidthItemWriter(str(tmp / "out.txt"), WIDTHS, fsync=False), typed
            ),
            fixed_write_loop,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", type=lambda s: s.split(","), default=None)
    parser.add_argument("--profile", default=None, help="cProfile batchd's side of this case")
    args = parser.parse_args()
    with benchkit.scratch("batchd-items-") as tmp:
        all_cases = cases(tmp, args.rows)
        chosen = args.cases or list(all_cases)
        print(
            f"# items_throughput: {args.rows:,} records, median of {args.repeat}; "
            f"{benchkit.machine()}"
        )
        results = []
        for name in chosen:
            ours, floor = all_cases[name]
            ours(), floor()  # warm-up
            timings = benchkit.alternate(
                args.repeat, lambda _r, fn=ours: fn(), lambda _r, fn=floor: fn()
            )
            results.append((name, timings))
        print(
            benchkit.table(
                ["case", "batchd items/s", "stdlib items/s", "ratio", "target"],
                [
                    [
                        name,
                        f"{args.rows / t.batchd_median:,.0f}",
                        f"{args.rows / t.baseline_median:,.0f}",
                        f"{t.ratio:.2f}",
                        benchkit.verdict(t.ratio, TARGET),
                    ]
                    for name, t in results
                ],
            )
        )
        print(benchkit.run_times(results).replace("baseline", "stdlib"))
        if args.profile:
            print(benchkit.profile(all_cases[args.profile][0]))


if __name__ == "__main__":
    main()
