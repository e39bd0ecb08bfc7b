"""Partitioned steps on threads, worker processes and a Dask cluster (DESIGN §3)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchd import BatchStatus, JobExecution, JobOperator, JobRegistry, StepExecution
from batchd.items import FileGlobPartitioner, JsonLinesItemReader
from batchd.model import STEP_COUNTERS
from tests.support.partition_jobs import (
    DieOnce,
    LockedReader,
    Upper,
    file_job,
    fill_source,
    fix_poison,
    partitioned_job,
    sink_rows,
)

ROWS = 2000  # four partitions of 500 keys: 1..500, 501..1000, 1001..1500, 1501..2000


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """A real Dask cluster: a scheduler and two worker processes of one thread each."""
    distributed = pytest.importorskip("distributed")
    import dask

    # Give up on a task after its second lost worker (default 3), to keep the test short.
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = distributed.Client(cluster)
        yield client
        client.close()
        cluster.close()


@pytest.fixture(params=["threads", "processes", "dask"])
def executor(request: pytest.FixtureRequest) -> Any:
    if request.param == "dask":
        return request.getfixturevalue("dask_client")
    return request.param


def steps_by_name(execution: JobExecution) -> dict[str, StepExecution]:
    return {step.step_name: step for step in execution.step_executions}


def assert_sink_holds_every_row_once(url: str, rows: int = ROWS) -> None:
    ids = Counter(row[0] for row in sink_rows(url))
    assert sorted(ids) == list(range(1, rows + 1))
    assert [i for i, n in ids.items() if n > 1] == []


def test_each_partition_is_a_step_execution_and_the_parent_sums_them(
    operator: JobOperator, registry: JobRegistry, database_url: str, executor: Any
) -> None:
    fill_source(database_url, ROWS)
    registry.register(partitioned_job(database_url, executor))

    execution = operator.start("partitioned", {"run": 1})

    assert execution.status == BatchStatus.COMPLETED, execution.exit_message
    steps = steps_by_name(execution)
    assert list(steps) == ["copy", "copy:0000", "copy:0001", "copy:0002", "copy:0003"]
    partitions = [steps[f"copy:{i:04d}"] for i in range(4)]
    assert [p.read_count for p in partitions] == [500, 500, 500, 500]
    assert [p.commit_count for p in partitions] == [10, 10, 10, 10]  # 10 chunks of 50
    assert [p.partition for p in partitions] == [
        {"index": 0, "start": 1, "end": 500},
        {"index": 1, "start": 501, "end": 1000},
        {"index": 2, "start": 1001, "end": 1500},
        {"index": 3, "start": 1501, "end": 2000},
    ]
    for counter in STEP_COUNTERS:
        assert getattr(steps["copy"], counter) == sum(getattr(p, counter) for p in partitions)
    # What the repository holds is what the operator returned.
    stored = steps_by_name(operator.get_execution(execution.id))
    assert {n: (s.status, s.write_count) for n, s in stored.items()} == {
        n: (s.status, s.write_count) for n, s in steps.items()
    }
    assert_sink_holds_every_row_once(database_url)


def test_a_dask_client_executor_works_like_the_client(
    operator: JobOperator, registry: JobRegistry, database_url: str, dask_client: Any
) -> None:
    fill_source(database_url, ROWS)
    registry.register(partitioned_job(database_url, dask_client.get_executor()))

    execution = operator.start("partitioned", {"run": 1})

    assert execution.status == BatchStatus.COMPLETED, execution.exit_message
    assert [s.read_count for s in execution.step_executions] == [2000, 500, 500, 500, 500]
    assert_sink_holds_every_row_once(database_url)
    # The work ran in the cluster's worker processes, not in this one.
    assert {pid for _, _, pid in sink_rows(database_url)}.isdisjoint({os.getpid()})


def test_restart_runs_only_the_partitions_that_did_not_complete(
    operator: JobOperator, registry: JobRegistry, database_url: str, executor: Any
) -> None:
    fill_source(database_url, ROWS, poison=frozenset({1234}))
    registry.register(partitioned_job(database_url, executor))

    first = operator.start("partitioned", {"run": 1})

    assert first.status == BatchStatus.FAILED
    steps = steps_by_name(first)
    assert {n: s.status for n, s in steps.items()} == {
        "copy": BatchStatus.FAILED,
        "copy:0000": BatchStatus.COMPLETED,
        "copy:0001": BatchStatus.COMPLETED,
        "copy:0002": BatchStatus.FAILED,
        "copy:0003": BatchStatus.COMPLETED,
    }
    assert "row 1234 is poisoned" in (steps["copy:0002"].exit_message or "")
    assert "copy:0002 FAILED: ValueError: row 1234 is poisoned" in (first.exit_message or "")
    # The poisoned chunk (1201..1250) rolled back; 1001..1200 are committed.
    assert steps["copy:0002"].write_count == 200

    fix_poison(database_url)
    second = operator.restart(first.id)

    assert second.status == BatchStatus.COMPLETED, second.exit_message
    steps = steps_by_name(second)
    assert list(steps) == ["copy", "copy:0002"]  # the completed partitions did not run again
    assert steps["copy:0002"].read_count == 300  # resumed after its last commit: 1201..1500
    assert steps["copy"].read_count == 300
    assert_sink_holds_every_row_once(database_url)
    assert {value for _, value, _ in sink_rows(database_url) if value == "FIXED"} == {"FIXED"}


def test_stop_reaches_every_partition_and_restart_completes_them(
    operator: JobOperator, registry: JobRegistry, database_url: str, executor: Any
) -> None:
    rows = 800  # 200 a partition at 10 ms an item: none can complete before the stop lands
    fill_source(database_url, rows)
    registry.register(
        partitioned_job(database_url, executor, processor=Upper(delay=0.01), chunk_size=10)
    )
    started = operator.start_async("partitioned", {"run": 1})
    deadline = time.monotonic() + 60
    while not any(  # stop once a partition has committed a chunk
        s.commit_count > 0 and ":" in s.step_name
        for s in operator.get_execution(started.id).step_executions
    ):
        assert time.monotonic() < deadline, "no partition ever committed"
        time.sleep(0.02)

    operator.stop(started.id)
    stopped = operator.wait(started.id, timeout=60)

    # The running partitions stopped at a chunk boundary, the queued ones before their
    # first chunk: every one is STOPPED, none FAILED.
    assert stopped.status == BatchStatus.STOPPED
    assert {n: s.status for n, s in steps_by_name(stopped).items()} == {
        "copy": BatchStatus.STOPPED,
        **{f"copy:{i:04d}": BatchStatus.STOPPED for i in range(4)},
    }
    assert 0 < len(sink_rows(database_url)) < rows

    done = operator.restart(started.id)

    assert done.status == BatchStatus.COMPLETED, done.exit_message
    assert_sink_holds_every_row_once(database_url, rows)


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_partition_files_are_merged_in_partition_order_once_all_completed(
    operator: JobOperator, registry: JobRegistry, tmp_path: Path, kind: str
) -> None:
    lines = [f"{i},name {i}" for i in range(1, 1001)]
    (tmp_path / "in.csv").write_text("id,name\n" + "\n".join(lines) + "\n")
    marker = tmp_path / "locked"
    marker.touch()
    registry.register(file_job(tmp_path, kind, marker))

    first = operator.start("files", {"run": 1})

    assert first.status == BatchStatus.FAILED
    assert "row 700 is locked" in (first.exit_message or "")
    out = tmp_path / "out"
    assert not (out / "all.csv").exists()  # no merge before every partition completed

    marker.unlink()
    second = operator.restart(first.id)

    assert second.status == BatchStatus.COMPLETED, second.exit_message
    assert [s.step_name for s in second.step_executions] == ["convert", "convert:0002"]
    expected = "id,name\n" + "".join(f"{i},NAME {i}\n" for i in range(1, 1001))
    assert (out / "all.csv").read_bytes().decode() == expected
    assert sorted(p.name for p in out.iterdir()) == ["all.csv"]  # parts and partials gone


def test_one_partition_per_file_matching_a_glob(
    operator: JobOperator, registry: JobRegistry, database_url: str, tmp_path: Path
) -> None:
    fill_source(database_url, 0)
    counts = {"a.jsonl": 3, "b.jsonl": 5, "c.jsonl": 2}
    next_id = 1
    for name, count in counts.items():
        lines = [f'{{"id": {i}, "value": "{name}"}}' for i in range(next_id, next_id + count)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        next_id += count
    (tmp_path / "ignored.csv").write_text("id\n1\n")
    registry.register(
        partitioned_job(
            database_url,
            "threads",
            reader=JsonLinesItemReader("{partition[path]}"),
            partitioner=FileGlobPartitioner(str(tmp_path / "*.jsonl")),
            name="per_file",
        )
    )

    execution = operator.start("per_file", {"run": 1})

    assert execution.status == BatchStatus.COMPLETED, execution.exit_message
    partitions = [s for s in execution.step_executions if s.partition is not None]
    assert [(p.partition or {}).get("path") for p in partitions] == [
        str(tmp_path / name) for name in counts
    ]
    assert [p.read_count for p in partitions] == list(counts.values())
    assert_sink_holds_every_row_once(database_url, sum(counts.values()))


class PartitionRecorder:
    """Partition hooks only, and a lock: it stays in the job's process, unpickled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[Any, ...]] = []

    def before_partition(self, step_execution: StepExecution) -> None:
        self.calls.append(("before", step_execution.step_name))

    def after_partition(self, step_execution: StepExecution, partitions: list[Any]) -> None:
        self.calls.append(
            ("after", step_execution.step_name, [(p.step_name, p.status) for p in partitions])
        )

    def on_partition_error(self, step_execution: StepExecution, error: BaseException) -> None:
        self.calls.append(("error", step_execution.step_name, str(error).splitlines()[0]))


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_partition_listeners_hear_the_plan_its_errors_and_the_end(
    operator: JobOperator, registry: JobRegistry, database_url: str, kind: str
) -> None:
    fill_source(database_url, ROWS, poison=frozenset({1234}))
    recorder = PartitionRecorder()
    registry.register(partitioned_job(database_url, kind, listener=recorder))

    operator.start("partitioned", {"run": 1})

    assert recorder.calls == [
        ("before", "copy"),
        ("error", "copy:0002", "ValueError: row 1234 is poisoned"),
        (
            "after",
            "copy",
            [
                ("copy:0000", BatchStatus.COMPLETED),
                ("copy:0001", BatchStatus.COMPLETED),
                ("copy:0002", BatchStatus.FAILED),
                ("copy:0003", BatchStatus.COMPLETED),
            ],
        ),
    ]


# ------------------------------------------------------------------------------ bad input


def test_a_partitioner_returning_no_partitions_fails_the_step(
    operator: JobOperator, registry: JobRegistry, database_url: str
) -> None:
    fill_source(database_url, 10)
    registry.register(partitioned_job(database_url, "threads", partitioner=lambda n, params: []))

    execution = operator.start("partitioned", {"run": 1})

    assert execution.status == BatchStatus.FAILED
    assert list(steps_by_name(execution)) == ["copy"]
    assert "returned no partitions" in (execution.exit_message or "")
    assert sink_rows(database_url) == []


def test_a_reader_that_cannot_be_pickled_fails_a_process_step_by_name(
    operator: JobOperator, registry: JobRegistry, database_url: str
) -> None:
    fill_source(database_url, 10)
    registry.register(partitioned_job(database_url, "processes", reader=LockedReader(database_url)))

    execution = operator.start("partitioned", {"run": 1})

    assert execution.status == BatchStatus.FAILED
    message = execution.exit_message or ""
    assert "its reader LockedReader cannot be pickled" in message
    assert "_thread.lock" in message
    assert list(steps_by_name(execution)) == ["copy"]  # no partition was started


@pytest.fixture
def start_killing_at_1234(
    operator: JobOperator, registry: JobRegistry, database_url: str, tmp_path: Path
) -> Callable[..., JobExecution]:
    """Starts the partitioned job over ROWS rows on ``executor``: processing row 1234 (in
    the third partition) kills its worker, the first time or, with ``always``, every time.
    ``tmp_path / "died"`` exists once it did."""

    def start(executor: Any, *, always: bool = False) -> JobExecution:
        fill_source(database_url, ROWS)
        dies = DieOnce(1234, tmp_path / "died", always=always)
        registry.register(partitioned_job(database_url, executor, processor=dies, partitions=4))
        return operator.start("partitioned", {"run": 1})

    return start


def test_a_worker_process_that_dies_fails_its_partition_and_restart_completes(
    operator: JobOperator, database_url: str, start_killing_at_1234: Callable[..., JobExecution]
) -> None:
    first = start_killing_at_1234("processes")

    assert first.status == BatchStatus.FAILED
    steps = steps_by_name(first)
    assert steps["copy:0002"].status == BatchStatus.FAILED
    assert "did not finish on processes" in (steps["copy:0002"].exit_message or "")
    assert "BrokenProcessPool" in (steps["copy:0002"].exit_message or "")
    # No partition counts as done unless it recorded its own end.
    for step in steps.values():
        assert step.status in (BatchStatus.COMPLETED, BatchStatus.FAILED)

    second = operator.restart(first.id)

    assert second.status == BatchStatus.COMPLETED, second.exit_message
    assert_sink_holds_every_row_once(database_url)


@pytest.mark.slow
def test_a_lost_dask_worker_is_replaced_and_the_partition_resumes(
    start_killing_at_1234: Callable[..., JobExecution],
    database_url: str,
    tmp_path: Path,
    dask_client: Any,
) -> None:
    execution = start_killing_at_1234(dask_client)

    # Dask ran the lost worker's task again in another process, which resumed at the
    # partition's last commit: 1001..1200 were written by the worker that died.
    assert execution.status == BatchStatus.COMPLETED, execution.exit_message
    assert (tmp_path / "died").exists()
    assert_sink_holds_every_row_once(database_url)
    pids = {row_id: pid for row_id, _, pid in sink_rows(database_url)}
    before = {pids[i] for i in range(1001, 1201)}
    after = {pids[i] for i in range(1201, 1501)}
    assert len(before) == 1 and before.isdisjoint(after)


@pytest.mark.slow
def test_a_partition_that_keeps_killing_dask_workers_fails_with_its_cause(
    start_killing_at_1234: Callable[..., JobExecution], dask_client: Any
) -> None:
    execution = start_killing_at_1234(dask_client, always=True)

    assert execution.status == BatchStatus.FAILED
    partition = steps_by_name(execution)["copy:0002"]
    assert partition.status == BatchStatus.FAILED
    assert "KilledWorker" in (partition.exit_message or "")
    dask_client.wait_for_workers(2, timeout=60)
