"""The data model of batchd: statuses, parameters, records and contexts (no I/O).

Everything but the statuses is imported when first used (parameters need pydantic, the
chunk transaction SQLAlchemy), so that reading a status costs no other import (``batchd
ctl`` reads them).
"""

from typing import TYPE_CHECKING

from batchd.lazy import lazy_attributes
from batchd.model.status import RESTARTABLE_STATUSES, RUNNING_STATUSES, BatchStatus

if TYPE_CHECKING:
    from batchd.model.context import ChunkContext, ExecutionContext, StepContext
    from batchd.model.params import (
        JobParameters,
        RawParams,
        build_parameters,
        canonical_json,
        job_key,
    )
    from batchd.model.records import (
        PARTITION_KEY,
        PLAN_KEY,
        STEP_COUNTERS,
        JobExecution,
        JobInstance,
        StepExecution,
    )
    from batchd.model.transaction import (
        ChunkTransaction,
        current_chunk_transaction,
        database_identity,
    )

# The records and contexts too: ``batchd ctl`` reads only the statuses, and building the
# records' dataclasses was a third of its start-up.
_LAZY = {
    **dict.fromkeys(("ChunkContext", "ExecutionContext", "StepContext"), "batchd.model.context"),
    **dict.fromkeys(
        ("PARTITION_KEY", "PLAN_KEY", "STEP_COUNTERS", "JobExecution", "JobInstance"),
        "batchd.model.records",
    ),
    "StepExecution": "batchd.model.records",
    "JobParameters": "batchd.model.params",
    "RawParams": "batchd.model.params",
    "build_parameters": "batchd.model.params",
    "canonical_json": "batchd.model.params",
    "job_key": "batchd.model.params",
    "ChunkTransaction": "batchd.model.transaction",
    "current_chunk_transaction": "batchd.model.transaction",
    "database_identity": "batchd.model.transaction",
}


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = [
    "PARTITION_KEY",
    "PLAN_KEY",
    "RESTARTABLE_STATUSES",
    "RUNNING_STATUSES",
    "STEP_COUNTERS",
    "BatchStatus",
    "ChunkContext",
    "ChunkTransaction",
    "ExecutionContext",
    "JobExecution",
    "JobInstance",
    "JobParameters",
    "RawParams",
    "StepContext",
    "StepExecution",
    "build_parameters",
    "canonical_json",
    "current_chunk_transaction",
    "database_identity",
    "job_key",
]
