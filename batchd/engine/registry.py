"""Jobs by name."""

from __future__ import annotations

import threading

from batchd.engine.job import Job
from batchd.errors import NoSuchJob


class JobRegistry:
    """Holds the jobs an operator can run. Registering a name again replaces the job
    (so that reloading a jobs module picks up its new version)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def register(self, job: Job) -> Job:
        if not isinstance(job, Job):
            raise TypeError(f"register() takes a Job built by JobBuilder, not {job!r}")
        with self._lock:
            self._jobs[job.name] = job
        return job

    def unregister(self, name: str) -> None:
        with self._lock:
            self._jobs.pop(name, None)

    def get(self, name: str) -> Job:
        try:
            return self._jobs[name]
        except KeyError:
            known = ", ".join(sorted(self._jobs)) or "none"
            raise NoSuchJob(f"no job named {name!r} is registered (registered: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def names(self) -> list[str]:
        return sorted(self._jobs)

    def jobs(self) -> list[Job]:
        return [self._jobs[name] for name in self.names()]
