"""Jobs of the node fault tests (``jobs = [..., "tests.daemon.node_fault_jobs"]``).

``gated`` runs until the file named by its ``gate`` parameter exists (or a stop is asked):
a test holds a job running for as long as it needs — across a database outage, say — and
lets it finish by creating the file. Its step creates ``<gate>.waiting`` once it waits: from
then on, the run needs the database again only when the gate opens.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

import batchd
from batchd import JobBuilder, StepBuilder, StepContext


class GateParams(BaseModel):
    gate: str


def wait_for_gate(ctx: StepContext) -> None:
    gate = Path(ctx.params.gate)
    Path(f"{gate}.waiting").touch()
    while not gate.exists():
        ctx.check_stop()
        time.sleep(0.02)


GATED = (
    JobBuilder("gated")
    .params_model(GateParams)
    .step(StepBuilder("wait").tasklet(wait_for_gate).build())
    .build()
)
batchd.register(GATED)
