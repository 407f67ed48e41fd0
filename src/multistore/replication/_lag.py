"""Lag measurement and the replica health state machine. Pure: no I/O, time passed in.

:class:`LagTracker` remembers when the primary's log reached which position (from the
router's own writes and from probes); a replica's lag in seconds is then how long ago
the primary first passed the replica's position. It works the same on PostgreSQL
LSNs and on the embedded change log, and an idle primary shows no lag.

:class:`ReplicaHealth` decides whether a replica takes new reads: a lag past the bound
takes it out at once; it comes back only after staying under the bound for
``readmit_after`` seconds; probes that fail count up to ``failures_to_eject`` before
it is ejected, then retried with backoff.
"""

from __future__ import annotations

import bisect
import enum
from collections import deque

from multistore.replication._config import RouterConfig

__all__ = ["Health", "LagTracker", "ReplicaHealth"]

_MAX_SAMPLES = 4096


class LagTracker:
    """``(time, position)`` samples of the primary's log, increasing in both."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self._positions: deque[int] = deque()

    @property
    def latest(self) -> int:
        return self._positions[-1] if self._positions else 0

    def observe(self, position: int, now: float) -> None:
        """The primary's log was at ``position`` at time ``now``."""
        if self._positions and position <= self._positions[-1]:
            return
        self._times.append(now)
        self._positions.append(position)
        if len(self._positions) > _MAX_SAMPLES:
            self._times.popleft()
            self._positions.popleft()

    def lag_seconds(self, replica_position: int, now: float) -> float:
        """How long ago the primary first went past ``replica_position`` (0: caught up)."""
        i = bisect.bisect_right(self._positions, replica_position)
        if i >= len(self._positions):
            return 0.0
        return max(0.0, now - self._times[i])

    def reset(self) -> None:
        self._times.clear()
        self._positions.clear()


class Health(enum.Enum):
    OK = "ok"
    """In rotation: takes new reads."""
    LAGGING = "lagging"
    """Reachable but behind (or not yet back under the bound long enough)."""
    DOWN = "down"
    """Ejected after failures; retried with backoff."""


class ReplicaHealth:
    """The rotation state of one replica, driven by probe and read outcomes."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.state = Health.LAGGING
        self.failures = 0
        self.attempt = 0
        self.retry_at = 0.0
        self.under_since: float | None = None
        self.last_error: str | None = None

    @property
    def in_rotation(self) -> bool:
        return self.state is Health.OK

    def admit(self) -> None:
        """Put in rotation now (the first probe at open found it within the bound)."""
        self.state = Health.OK
        self.under_since = None

    def suspend(self) -> None:
        """Out of rotation until it has been under the bound for ``readmit_after``."""
        self.state = Health.LAGGING
        self.under_since = None

    def should_probe(self, now: float) -> bool:
        return self.state is not Health.DOWN or now >= self.retry_at

    def probe_ok(self, lag: float, now: float) -> None:
        self.failures = 0
        self.attempt = 0
        self.last_error = None
        if lag > self.config.max_lag:
            self.state = Health.LAGGING
            self.under_since = None
            return
        if self.state is Health.OK:
            return
        if self.state is Health.DOWN:
            self.state = Health.LAGGING
        if self.under_since is None:
            self.under_since = now
        if now - self.under_since >= self.config.readmit_after:
            self.state = Health.OK
            self.under_since = None

    def probe_failed(self, error: str, now: float) -> None:
        """A probe that failed or timed out: no evidence either way, until the failures
        add up to ``failures_to_eject``."""
        self.last_error = error
        self.under_since = None
        self.failures += 1
        if self.state is Health.DOWN:
            self._retry_later(now)
        elif self.failures >= self.config.failures_to_eject:
            self.eject(error, now)

    def eject(self, error: str, now: float) -> None:
        """Out of rotation at once (a read on it failed to reach it)."""
        self.last_error = error
        self.state = Health.DOWN
        self.under_since = None
        self._retry_later(now)

    def _retry_later(self, now: float) -> None:
        self.retry_at = now + self.config.retry.delay(self.attempt)
        self.attempt += 1
