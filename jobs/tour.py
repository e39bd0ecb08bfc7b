"""A tour of the Python API on SQLite, in a fresh temporary directory: ``python -m jobs.tour``.

It runs the end-of-day job for two business dates, shows that a completed date is never
run again, lets a run fail because its input has not arrived, and restarts it.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table


def write_transactions(path: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["txn_id,account,amount,currency"]
    for i in range(count):
        account = f"DE{rng.randrange(10, 30):02d}0000"
        lines.append(f"{path.stem}-{i:06d},{account},{rng.uniform(-500, 900):.2f},EUR")
    lines.insert(count // 2, "broken-line,DE000000,not-a-number,EUR")  # skipped, not fatal
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    console = Console(width=max(Console().width, 110))
    workdir = Path(tempfile.mkdtemp(prefix="batchd-demo-"))
    os.chdir(workdir)
    os.environ["BATCHD_DATABASE_URL"] = f"sqlite:///{workdir / 'batchd.db'}"
    import batchd
    import jobs.end_of_day  # noqa: F401  (registers the job)
    from batchd.errors import JobInstanceAlreadyComplete

    batchd.configure(os.environ["BATCHD_DATABASE_URL"])
    console.rule(f"batchd demo in {workdir}")

    write_transactions(Path("data/transactions_20261121.csv"), 5000, seed=21)
    console.print("1. end of day for 2026-11-21")
    first = batchd.start("end_of_day", {"date": "2026-11-21"})
    console.print(f"   -> execution {first.id}: [bold]{first.status.value}[/bold]")

    console.print("2. the same date again")
    try:
        batchd.start("end_of_day", {"date": "2026-11-21"})
    except JobInstanceAlreadyComplete as refused:
        console.print(f"   -> refused: {refused}")

    console.print("3. 2026-11-22 before its transactions file has arrived")
    failed = batchd.start("end_of_day", {"date": "2026-11-22"})
    reason = (failed.exit_message or "").splitlines()[0]
    console.print(
        f"   -> execution {failed.id}: [bold red]{failed.status.value}[/bold red] {reason}"
    )

    console.print("4. the file arrives; restart the failed run")
    write_transactions(Path("data/transactions_20261122.csv"), 3000, seed=22)
    restarted = batchd.restart(failed.id)
    console.print(
        f"   -> execution {restarted.id}: [bold]{restarted.status.value}[/bold] "
        f"(same instance: {restarted.instance_id == failed.instance_id})"
    )

    table = Table(title="batchd executions (newest first)")
    for column in (
        "execution",
        "date",
        "status",
        "step",
        "step status",
        "read",
        "written",
        "skipped",
    ):
        table.add_column(column)
    for execution in batchd.default_operator().list_executions():
        for step in execution.step_executions:
            table.add_row(
                str(execution.id),
                execution.params["date"],
                execution.status.value,
                step.step_name,
                step.status.value,
                str(step.read_count),
                str(step.write_count),
                str(step.skip_count),
            )
    console.print(table)
    report = Path("out/balances_20261122.csv").read_text().splitlines()
    console.print("out/balances_20261122.csv:", *report[:4], "...", sep="\n  ")
    batchd.default_operator().shutdown()
    ok = restarted.status == batchd.BatchStatus.COMPLETED and first.status.value == "COMPLETED"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
