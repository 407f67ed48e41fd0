"""Tunables of the router as value objects, with module-level defaults."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Final, TypeVar

from multistore.errors import InvalidValueError

__all__ = ["Backoff", "LogShipping", "RouterConfig", "bounded"]

T = TypeVar("T")

DEFAULT_MAX_LAG: Final = 5.0
DEFAULT_READMIT_AFTER: Final = 2.0
DEFAULT_PROBE_INTERVAL: Final = 0.5
DEFAULT_PROBE_TIMEOUT: Final = 1.0
DEFAULT_CAUSAL_WAIT: Final = 0.0


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: ``initial * factor**attempt``, at most ``cap`` seconds."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 10.0

    def delay(self, attempt: int) -> float:
        return float(min(self.cap, self.initial * self.factor ** max(0, attempt)))


@dataclass(frozen=True)
class RouterConfig:
    """How the router measures replicas and routes reads.

    - ``max_lag``: seconds; a replica further behind gets no new reads (reads already
      running on it finish).
    - ``readmit_after``: a lagging or ejected replica comes back only after it stayed
      under ``max_lag`` for this long (hysteresis).
    - ``probe_interval`` / ``probe_timeout``: the lag and health probe.
    - ``failures_to_eject``: consecutive failed probes before a replica is ejected, so
      one probe that times out does not flap it; a read that fails ejects at once.
    - ``retry``: the backoff between attempts to bring back an ejected node.
    - ``causal_wait``: how long a read with a token waits for a replica to replay
      past it before it goes to the primary. 0 (the default): no wait — a replica
      that the router already knows has replayed the token serves the read, else
      the primary does at once, so such a read is never slower than one on the
      primary. Above 0 the router polls the replicas' replay positions (with backoff)
      up to that bound, keeping reads off the primary at the cost of latency.
    - ``auto_failover``: promote a replica by itself after ``failures_to_failover``
      consecutive failed probes of the primary (off by default).
    """

    max_lag: float = DEFAULT_MAX_LAG
    readmit_after: float = DEFAULT_READMIT_AFTER
    probe_interval: float = DEFAULT_PROBE_INTERVAL
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    failures_to_eject: int = 3
    retry: Backoff = Backoff()
    causal_wait: float = DEFAULT_CAUSAL_WAIT
    auto_failover: bool = False
    failures_to_failover: int = 3

    def __post_init__(self) -> None:
        for name in ("max_lag", "readmit_after", "probe_interval", "probe_timeout"):
            if not getattr(self, name) > 0:
                raise InvalidValueError(f"RouterConfig.{name} must be > 0")
        if self.causal_wait < 0:
            raise InvalidValueError("RouterConfig.causal_wait must be >= 0")
        if self.failures_to_eject < 1 or self.failures_to_failover < 1:
            raise InvalidValueError("RouterConfig failure thresholds must be >= 1")


@dataclass(frozen=True)
class LogShipping:
    """The embedded SQLite log shipper: each replica applies the primary's change log
    ``delay`` seconds after each entry committed; the shipper looks for new entries
    every ``interval`` seconds (and at once after a write through the router)."""

    delay: float = 0.0
    interval: float = 0.05

    def __post_init__(self) -> None:
        if self.delay < 0 or not self.interval > 0:
            raise InvalidValueError("LogShipping needs delay >= 0 and interval > 0")


async def bounded(awaitable: Awaitable[T], seconds: float) -> T:
    """``await awaitable`` for at most ``seconds`` (:class:`TimeoutError` after).

    ``asyncio.timeout`` rather than ``asyncio.wait_for``, which in Python 3.11 can
    swallow a cancellation that arrives as the inner call completes."""
    async with asyncio.timeout(seconds):
        return await awaitable
