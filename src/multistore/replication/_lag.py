"""Lag measurement and the replica health state machine. Pure: no I/O, time passed in.

:class:`LagTracker` remembers at which position the primary's log stood at which times
(from probes and from the router's own writes); a replica's lag in seconds is then an
upper bound: the time since the last sample at or below the replica's position. It
works the same on PostgreSQL LSNs and on the embedded change log; a caught-up replica
of an idle primary shows the time since the last probe.

:class:`ReplicaHealth` decides whether a replica takes new reads: a lag past the bound
takes it out at once; it comes back only after staying under the bound for
``readmit_after`` seconds; probes that fail count up to ``failures_to_eject`` before
it is ejected, then retried with backoff.
"""

from __future__ import annotations

import bisect
import enum
import math

from multistore.replication._config import RouterConfig

__all__ = ["Health", "LagTracker", "ReplicaHealth"]

_MAX_SAMPLES = 4096


class LagTracker:
    """Samples ``(t, p)`` of the primary's log: position ``p`` was read at or after time
    ``t``, so every commit made before ``t`` is at or below ``p``.

    A replica that has replayed up to ``r`` therefore holds every commit made before
    the time of the last sample with ``p <= r``, and ``now`` minus that time is an
    upper bound on how stale it is. The bound grows while no new sample comes (an
    idle primary is still probed; a primary that stops answering probes adds no
    samples, so the bound keeps growing), and it is unknown (``None``/infinite) for a
    replica behind every sample kept. Samples that another sample makes useless (one
    taken no earlier at no further position) are dropped, so times and positions both
    increase along the list.
    """

    def __init__(self) -> None:
        self._times: list[float] = []
        self._positions: list[int] = []
        self.latest = 0
        """The furthest position seen (from probes and from writes through the router)."""

    def observe(self, position: int, now: float) -> None:
        """The primary's log was read at ``position`` at or after time ``now``."""
        at = now
        self.latest = max(self.latest, position)
        times, positions = self._times, self._positions
        if not times or at >= times[-1]:  # the usual case: the newest sample
            while positions and positions[-1] >= position:
                times.pop()
                positions.pop()
            times.append(at)
            positions.append(position)
            if len(times) > 2 * _MAX_SAMPLES:
                del times[:-_MAX_SAMPLES]
                del positions[:-_MAX_SAMPLES]
            return
        # A sample stamped before the newest one (a write's, after a probe's).
        j = bisect.bisect_right(positions, position) - 1
        if j >= 0 and times[j] >= at:
            return  # a later sample at or below this position says more
        i = bisect.bisect_left(positions, position)
        k = bisect.bisect_right(times, at, lo=i)
        del times[i:k]
        del positions[i:k]
        times.insert(i, at)
        positions.insert(i, position)

    def fresh_as_of(self, replica_position: int) -> float | None:
        """A time before which every commit is at or below ``replica_position`` (the
        latest such sample); None when no sample says so."""
        j = bisect.bisect_right(self._positions, replica_position) - 1
        return self._times[j] if j >= 0 else None

    def lag_seconds(self, replica_position: int, now: float) -> float:
        """An upper bound on the staleness of a replica at ``replica_position`` at time
        ``now``; ``math.inf`` when unknown."""
        fresh = self.fresh_as_of(replica_position)
        return math.inf if fresh is None else max(0.0, now - fresh)

    def reset(self) -> None:
        self._times.clear()
        self._positions.clear()
        self.latest = 0


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

    def probe_reachable(self) -> None:
        """A probe reached the replica but its lag could not be measured, because the
        primary did not answer its probe: no evidence about lag, so a replica in
        rotation stays in it and one out of rotation stays out."""
        self.failures = 0
        self.attempt = 0
        self.last_error = None
        self.under_since = None
        if self.state is Health.DOWN:
            self.state = Health.LAGGING

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
