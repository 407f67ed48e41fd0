"""Retry policies: capped exponential backoff with jitter, for retriable errors only.

A :class:`RetryPolicy` is a small value object. It decides two things: whether an
error is worth another attempt (:meth:`RetryPolicy.retriable`) and how long to wait
before attempt ``n + 1`` (:meth:`RetryPolicy.delay`, pure: the randomness comes in as
a number in ``[0, 1)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from multistore.errors import MultistoreError, StoreError, UsageError

__all__ = [
    "COMPENSATION_RETRY",
    "DEFAULT_RETRY",
    "RETRIABLE_ERRORS",
    "RetryPolicy",
    "default_retriable",
]

RETRIABLE_ERRORS: tuple[type[BaseException], ...] = (StoreError, TimeoutError, ConnectionError)
"""Errors retried by default: the store failed or did not answer in time (the
operation may or may not have happened, so the step must be idempotent)."""


def default_retriable(exc: BaseException) -> bool:
    """The default classifier: :data:`RETRIABLE_ERRORS`, and any multistore error
    whose outcome is indeterminate (a step timeout, a lost connection)."""
    if isinstance(exc, RETRIABLE_ERRORS):
        return True
    return isinstance(exc, MultistoreError) and not exc.definite


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    ``max_attempts`` counts every attempt, the first included (1 = never retry).
    The wait before attempt ``n + 1`` is ``min(max_delay, initial_delay *
    multiplier ** (n - 1))``, reduced by up to ``jitter`` of itself at random
    (``jitter=1.0`` is "full jitter", ``0`` none). Only errors for which
    ``retry_on`` (a tuple of types, or a predicate) says yes are retried.
    """

    max_attempts: int = 3
    initial_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 10.0
    jitter: float = 0.5
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] = field(
        default=default_retriable
    )

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UsageError(
                f"RetryPolicy.max_attempts must be at least 1, not {self.max_attempts}"
            )
        if self.initial_delay < 0 or self.max_delay < 0:
            raise UsageError("RetryPolicy delays must not be negative")
        if self.multiplier < 1:
            raise UsageError(f"RetryPolicy.multiplier must be at least 1, not {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise UsageError(f"RetryPolicy.jitter must be between 0 and 1, not {self.jitter}")

    def retriable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt (ignoring the attempt count)."""
        if isinstance(self.retry_on, tuple):
            return isinstance(exc, self.retry_on)
        return bool(self.retry_on(exc))

    def should_retry(self, exc: BaseException, attempts: int) -> bool:
        """Whether to try again after ``attempts`` attempts, the last of which raised."""
        return attempts < self.max_attempts and self.retriable(exc)

    def delay(self, attempts: int, random: float) -> float:
        """Seconds to wait after attempt number ``attempts`` failed (``random`` in [0, 1))."""
        exponent = min(max(attempts - 1, 0), 64)
        base = min(self.max_delay, self.initial_delay * self.multiplier**exponent)
        return base * (1.0 - self.jitter * random)


DEFAULT_RETRY = RetryPolicy()
"""Steps: 3 attempts, 0.1 s doubling to at most 10 s, on store failures and timeouts."""

COMPENSATION_RETRY = RetryPolicy(
    max_attempts=8, initial_delay=0.1, max_delay=30.0, retry_on=(Exception,)
)
"""Compensations: retried on any error (an undo must not give up on a business
error), 8 attempts; then the saga is stuck for an operator."""
