"""A job module that the warm worker process imports slowly (the daemon itself imports it at
once): the daemon's start-up then lasts longer than a short lease after it has joined."""

import sys
import time

import batchd
from tests.support.jobs import tasklet_job

IMPORT_SECONDS = 3.0

_main = sys.modules.get("__main__")
if getattr(getattr(_main, "__spec__", None), "name", "") == "batchd.daemon.workers_zygote":
    time.sleep(IMPORT_SECONDS)

batchd.register(tasklet_job("slow_start", lambda ctx: None))
