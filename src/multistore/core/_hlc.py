"""Hybrid logical clocks (Kulkarni, Demirbas et al., "Logical Physical Clocks", 2014).

A timestamp is ``(physical_ms, counter, node)``: the greatest wall-clock time this
node has heard of, a counter that orders events within one millisecond, and the
node id as the final tie-break, so two timestamps are never equal unless they
name the same event. The clock never goes backwards, even when the wall clock
does, and stays within a bounded distance of physical time as long as every
node's wall clock does: the **skew guard** refuses (or flags) remote timestamps
too far ahead of our own wall clock, because a clock that runs ahead would
otherwise drag every node's clock with it, and under last-writer-wins its
writes would beat every later write for as long as the skew lasts.

No real time is read here: the wall clock is an injected ``now_ms`` callable.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from multistore.errors import ClockSkewError, InvalidValueError

__all__ = [
    "MAX_COUNTER",
    "MAX_PHYSICAL_MS",
    "ClockSkewError",
    "ClockStatistics",
    "ClockUpdate",
    "HLCTimestamp",
    "HybridClock",
    "SkewPolicy",
]

_PHYSICAL_DIGITS: Final = 12
_COUNTER_DIGITS: Final = 6
MAX_PHYSICAL_MS: Final = 16**_PHYSICAL_DIGITS - 1
"""Largest physical time a timestamp can hold (about the year 10889)."""
MAX_COUNTER: Final = 16**_COUNTER_DIGITS - 1
"""Largest logical counter; past it the clock borrows one millisecond."""

_TEXT_RE: Final = re.compile(
    rf"^(?P<p>[0-9a-f]{{{_PHYSICAL_DIGITS}}})-(?P<c>[0-9a-f]{{{_COUNTER_DIGITS}}})-(?P<n>.+)$",
    re.DOTALL,
)


_NODE_RE: Final = re.compile(r"\S+")


@functools.lru_cache(maxsize=4096)
def _printable_without_space(node: str) -> bool:
    return node.isprintable() and _NODE_RE.fullmatch(node) is not None


def _check_node(node: object) -> str:
    if not isinstance(node, str) or not node:
        raise InvalidValueError(f"a node id must be a non-empty string, got {node!r}")
    if not _printable_without_space(node):
        raise InvalidValueError(f"node id {node!r} must be printable and contain no whitespace")
    return node


@dataclass(frozen=True, order=True, slots=True)
class HLCTimestamp:
    """One hybrid-logical-clock reading; ordered by physical time, counter, then node id.

    ``str(ts)`` gives a compact text form (``"0190a1b2c3d4-000001-node"``: fixed-width
    lowercase hex, then the node id) whose lexicographic order is the order of the
    timestamps; :meth:`parse` reads it back.
    """

    physical_ms: int
    counter: int
    node: str

    def __post_init__(self) -> None:
        if type(self.physical_ms) is not int or not 0 <= self.physical_ms <= MAX_PHYSICAL_MS:
            raise InvalidValueError(
                f"HLC physical_ms must be an int in [0, {MAX_PHYSICAL_MS}], "
                f"got {self.physical_ms!r}"
            )
        if type(self.counter) is not int or not 0 <= self.counter <= MAX_COUNTER:
            raise InvalidValueError(
                f"HLC counter must be an int in [0, {MAX_COUNTER}], got {self.counter!r}"
            )
        _check_node(self.node)

    def __str__(self) -> str:
        physical = format(self.physical_ms, f"0{_PHYSICAL_DIGITS}x")
        counter = format(self.counter, f"0{_COUNTER_DIGITS}x")
        return f"{physical}-{counter}-{self.node}"

    @classmethod
    def parse(cls, text: str) -> HLCTimestamp:
        """Read the form written by ``str()``; :class:`InvalidValueError` if it is not one."""
        match = _TEXT_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidValueError(f"not an HLC timestamp: {text!r}")
        return cls(int(match["p"], 16), int(match["c"], 16), match["n"])


class SkewPolicy(enum.Enum):
    """What :meth:`HybridClock.update` does with a timestamp too far in the future."""

    REJECT = "reject"
    """Raise :class:`ClockSkewError`; the clock is left unchanged."""
    FLAG = "flag"
    """Accept it (the clock jumps ahead) but report it in the result and the statistics."""


@dataclass(frozen=True, slots=True)
class ClockUpdate:
    """What receiving one remote timestamp did: the new local timestamp and the skew seen."""

    timestamp: HLCTimestamp
    skew_ms: int
    """How far the remote physical time was ahead of our wall clock (0 if behind)."""
    flagged: bool
    """True when the skew exceeded the bound and the policy was :attr:`SkewPolicy.FLAG`."""


@dataclass(frozen=True, slots=True)
class ClockStatistics:
    """Counters of one :class:`HybridClock`, as an immutable value."""

    issued: int
    """Timestamps made by :meth:`HybridClock.now`."""
    received: int
    """Remote timestamps merged by :meth:`HybridClock.update` (flagged ones included)."""
    skew_rejected: int
    skew_flagged: int
    max_skew_ms: int
    """The largest distance a remote timestamp was ahead of our wall clock."""
    wall_clock_regressions: int
    """Times the injected wall clock returned less than it did before."""
    counter_overflows: int
    """Times the counter ran out and the clock borrowed a millisecond."""


class HybridClock:
    """A hybrid logical clock for one node.

    ``now()`` stamps a local or send event, ``update(remote)`` a receive event.
    Both return timestamps strictly greater than every timestamp this clock has
    returned before, whatever the wall clock does. Persist the last timestamp and
    call :meth:`restore` after a restart to keep that promise across restarts.
    """

    def __init__(
        self,
        node_id: str,
        *,
        now_ms: Callable[[], int],
        max_skew_ms: int = 60_000,
        policy: SkewPolicy | str = SkewPolicy.REJECT,
    ) -> None:
        self._node = _check_node(node_id)
        if type(max_skew_ms) is not int or max_skew_ms < 0:
            raise InvalidValueError(f"max_skew_ms must be a non-negative int, got {max_skew_ms!r}")
        try:
            self._policy = SkewPolicy(policy)
        except ValueError:
            choices = ", ".join(repr(p.value) for p in SkewPolicy)
            raise InvalidValueError(
                f"unknown skew policy {policy!r}; choose one of {choices}"
            ) from None
        self._now_ms = now_ms
        self._max_skew_ms = max_skew_ms
        self._physical = 0
        self._counter = 0
        self._started = False
        self._last_wall = -1
        self._issued = 0
        self._received = 0
        self._rejected = 0
        self._flagged = 0
        self._max_skew_seen = 0
        self._regressions = 0
        self._overflows = 0

    @property
    def node_id(self) -> str:
        return self._node

    @property
    def max_skew_ms(self) -> int:
        return self._max_skew_ms

    @property
    def policy(self) -> SkewPolicy:
        return self._policy

    @property
    def last(self) -> HLCTimestamp | None:
        """The greatest timestamp this clock has returned or been restored to, if any."""
        if not self._started:
            return None
        return HLCTimestamp(self._physical, self._counter, self._node)

    def _wall(self) -> int:
        wall = self._now_ms()
        if type(wall) is not int or wall < 0:
            raise InvalidValueError(f"the wall clock must return a non-negative int, got {wall!r}")
        if wall < self._last_wall:
            self._regressions += 1
        self._last_wall = wall
        return min(wall, MAX_PHYSICAL_MS)

    def _set(self, physical: int, counter: int) -> HLCTimestamp:
        if counter > MAX_COUNTER:
            # Borrow a millisecond rather than wrap: order is kept, and the clock
            # runs at most a few ms ahead only under extreme event rates.
            self._overflows += 1
            physical, counter = physical + 1, 0
        if physical > MAX_PHYSICAL_MS:
            raise InvalidValueError("the hybrid logical clock ran past its largest physical time")
        self._physical, self._counter, self._started = physical, counter, True
        return HLCTimestamp(physical, counter, self._node)

    def now(self) -> HLCTimestamp:
        """A timestamp for a local or send event."""
        wall = self._wall()
        self._issued += 1
        if not self._started:
            return self._set(wall, 0)
        if wall > self._physical:
            return self._set(wall, 0)
        return self._set(self._physical, self._counter + 1)

    def skew_of(self, remote: HLCTimestamp) -> int:
        """How many ms ``remote`` is ahead of our wall clock now (0 if it is not ahead)."""
        return max(0, remote.physical_ms - self._wall())

    def update(self, remote: HLCTimestamp) -> HLCTimestamp:
        """Merge a received timestamp; return the receive event's timestamp.

        Raises :class:`ClockSkewError` (without changing the clock) when ``remote``
        is more than ``max_skew_ms`` ahead of our wall clock and the policy is
        :attr:`SkewPolicy.REJECT`. Use :meth:`observe` to also learn the skew.
        """
        return self.observe(remote).timestamp

    def observe(self, remote: HLCTimestamp) -> ClockUpdate:
        """Like :meth:`update`, returning the skew seen and whether it was flagged."""
        if not isinstance(remote, HLCTimestamp):
            raise InvalidValueError(f"expected an HLCTimestamp, got {type(remote).__name__}")
        wall = self._wall()
        skew = max(0, remote.physical_ms - wall)
        self._max_skew_seen = max(self._max_skew_seen, skew)
        flagged = False
        if skew > self._max_skew_ms:
            if self._policy is SkewPolicy.REJECT:
                self._rejected += 1
                raise ClockSkewError(
                    f"timestamp {remote} from node {remote.node!r} is {skew} ms ahead of the "
                    f"wall clock of node {self._node!r}; at most {self._max_skew_ms} ms is allowed",
                    remote=remote,
                    skew_ms=skew,
                )
            flagged = True
            self._flagged += 1
        self._received += 1
        if not self._started:
            local_p, local_c = -1, 0
        else:
            local_p, local_c = self._physical, self._counter
        physical = max(local_p, remote.physical_ms, wall)
        if physical == local_p and physical == remote.physical_ms:
            counter = max(local_c, remote.counter) + 1
        elif physical == local_p:
            counter = local_c + 1
        elif physical == remote.physical_ms:
            counter = remote.counter + 1
        else:
            counter = 0
        return ClockUpdate(self._set(physical, counter), skew, flagged)

    def restore(self, last: HLCTimestamp) -> None:
        """Seed the clock after a restart: every later timestamp will exceed ``last``.

        ``last`` is the greatest timestamp the node persisted before it stopped.
        Restoring never moves the clock backwards.
        """
        if not isinstance(last, HLCTimestamp):
            raise InvalidValueError(f"expected an HLCTimestamp, got {type(last).__name__}")
        if not self._started or (last.physical_ms, last.counter) > (self._physical, self._counter):
            self._physical, self._counter, self._started = last.physical_ms, last.counter, True

    def statistics(self) -> ClockStatistics:
        return ClockStatistics(
            issued=self._issued,
            received=self._received,
            skew_rejected=self._rejected,
            skew_flagged=self._flagged,
            max_skew_ms=self._max_skew_seen,
            wall_clock_regressions=self._regressions,
            counter_overflows=self._overflows,
        )

    def __repr__(self) -> str:
        return f"HybridClock({self._node!r}, last={self.last}, policy={self._policy.value!r})"
