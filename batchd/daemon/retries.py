"""Automatic retries of failed job executions (go-job's retries, Airflow's ``retries`` and
``retry_delay``, Control-M's rerun).

A job with ``retries = N`` in the daemon's config has each FAILED execution restarted (a
restart: it resumes after its last commit) while its attempt is at most N, after
``retry_delay * 2 ** (attempt - 1)``, at most ``retry_max_delay`` (tenacity's exponential
wait). An execution whose job marked its error permanent (exit status ``FAILED_PERMANENT``)
is not retried. The pass reads the repository, so a retry that was due while the daemon was
down happens when it is back, and nodes sharing a repository restart an execution once (the
database allows one running execution per instance).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from batchd.daemon.passes import PassThread
from batchd.engine import JobOperator
from batchd.engine.job_runner import FAILED_PERMANENT
from batchd.errors import BatchError
from batchd.model import BatchStatus, JobExecution

if TYPE_CHECKING:
    from batchd.daemon.settings import Settings

log = logging.getLogger(__name__)

# How many FAILED executions of one job a pass looks at (newest first).
_SCAN_LIMIT = 200


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` restarts at most, the first ``delay`` after the failure, each next one
    twice as long, never more than ``max_delay``."""

    retries: int
    delay: timedelta = timedelta(minutes=5)
    max_delay: timedelta = timedelta(hours=1)

    def backoff(self, attempt: int) -> timedelta:
        """How long after attempt ``attempt`` failed the next one starts."""
        # Imported here: only a failed execution with retries needs it, and tenacity
        # imports Tornado's integration (and curses) with it.
        from tenacity import RetryCallState, wait_exponential

        wait = wait_exponential(
            multiplier=self.delay.total_seconds(), max=self.max_delay.total_seconds()
        )
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return timedelta(seconds=wait(state))


def policies_from(settings: Settings) -> dict[str, RetryPolicy]:
    """The retry policy of each job its ``[job.<name>]`` section gives retries."""
    return {
        name: RetryPolicy(job.retries, job.retry_delay, job.retry_max_delay)
        for name, job in settings.job.items()
        if job.retries > 0
    }


def retry_time(execution: JobExecution, policy: RetryPolicy) -> datetime | None:
    """When ``execution`` is to be restarted, or None when it is not to be."""
    if (
        execution.status != BatchStatus.FAILED
        or execution.exit_status == FAILED_PERMANENT
        or execution.attempt > policy.retries
        or execution.end_time is None
    ):
        return None
    return execution.end_time + policy.backoff(execution.attempt)


class Retrier:
    """The daemon's retry pass, on a thread of its own. ``policies()`` is read at every pass
    (a reload changes them); ``on_retry(failed, retry)`` hears of each restart (metrics)."""

    def __init__(
        self,
        operator: JobOperator,
        policies: Callable[[], Mapping[str, RetryPolicy]],
        *,
        on_retry: Callable[[JobExecution, JobExecution], None] | None = None,
        poll: float = 30.0,
    ) -> None:
        self.operator = operator
        self.repository = operator.repository
        self.policies = policies
        self.on_retry = on_retry
        self.poll = poll
        self._passes = PassThread(
            "batchd-retries", self._next_pass, every=poll, what="the retry pass"
        )

    def run_once(self) -> tuple[list[JobExecution], float]:
        """Restart every execution whose retry is due; the restarts, and the seconds until
        the next retry is due (at most ``poll``)."""
        now = self.repository.clock()
        retried: list[JobExecution] = []
        wait = self.poll
        for job_name, policy in self.policies().items():
            if policy.retries < 1 or job_name not in self.operator.registry:
                continue
            failed = self.repository.list_executions(
                job_name=job_name, status=BatchStatus.FAILED, limit=_SCAN_LIMIT
            )
            for execution in failed:
                due = retry_time(execution, policy)
                if due is None:
                    continue
                last = self.repository.last_execution_of_instance(execution.instance_id)
                if last is None or last.id != execution.id:
                    continue  # restarted (or abandoned) already
                if due > now:
                    wait = min(wait, (due - now).total_seconds())
                    continue
                retry = self._restart(execution, policy)
                if retry is not None:
                    retried.append(retry)
        return retried, wait

    def _restart(self, execution: JobExecution, policy: RetryPolicy) -> JobExecution | None:
        try:
            retry = self.operator.restart_async(execution.id)
        except BatchError as error:
            # Another node restarted it first, or it is no longer restartable.
            log.info(
                "job execution %d (%s) not retried: %s", execution.id, execution.job_name, error
            )
            return None
        log.warning(
            "job execution %d (%s) FAILED: retry %d of %d is execution %d",
            execution.id,
            execution.job_name,
            execution.attempt,
            policy.retries,
            retry.id,
        )
        if self.on_retry is not None:
            self.on_retry(execution, retry)
        return retry

    # ----------------------------------------------------------------- the thread

    def on_execution_ended(self, execution: JobExecution) -> None:
        """Operator observer: look again now (a retry with no delay is due at once)."""
        self._passes.wake()

    def _next_pass(self) -> float:
        """One pass on the thread; the seconds until the next one."""
        _, wait = self.run_once()
        return max(wait, 0.05)

    def start(self) -> None:
        self._passes.start()

    def stop(self) -> None:
        self._passes.stop(timeout=10)

    def threads(self) -> list[threading.Thread]:
        return self._passes.threads()
