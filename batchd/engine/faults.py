"""Retry and skip policies of a chunk step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from batchd.errors import SkipLimitExceeded as SkipLimitExceeded

T = TypeVar("T")

ErrorTypes = tuple[type[BaseException], ...]


@dataclass(frozen=True)
class FaultPolicy:
    """Which errors are retried (per item, ``retry_limit`` more tries, ``backoff`` seconds
    apart) and which are skipped (at most ``skip_limit`` items per step execution)."""

    retry_on: ErrorTypes = ()
    retry_limit: int = 0
    backoff: float = 0.0
    skip_on: ErrorTypes = ()
    skip_limit: int = 0

    @property
    def tolerant(self) -> bool:
        return bool(self.retry_on and self.retry_limit) or bool(self.skip_on)

    def is_retryable(self, error: BaseException) -> bool:
        return bool(self.retry_on) and isinstance(error, self.retry_on)

    def is_skippable(self, error: BaseException) -> bool:
        return bool(self.skip_on) and isinstance(error, self.skip_on)

    def call_with_retry(self, fn: Callable[[], T]) -> T:
        """Call ``fn``, retrying retryable errors; the last error propagates."""
        if not (self.retry_on and self.retry_limit):
            return fn()
        # Imported here: only steps that retry need it (and workers start faster without).
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

        retrying = Retrying(
            retry=retry_if_exception_type(self.retry_on),
            stop=stop_after_attempt(self.retry_limit + 1),
            wait=wait_fixed(self.backoff),
            reraise=True,
        )
        return retrying(fn)
