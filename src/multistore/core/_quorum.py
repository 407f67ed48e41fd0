"""Quorum arithmetic: consistency levels, R/W/N checks and the named presets.

With N replicas, a read that waits for R of them and a write that waits for W
overlap in at least one replica when ``R + W > N``: every read then meets the
latest acknowledged write. ``R + W <= N`` is allowed (it is faster and stays
available with more nodes down) but reads may be stale; :meth:`QuorumConfig.warning`
says so, and the replication layer turns it into a warning.

The seed's three configurations are presets, named for what they do:

=======================  =====  =====  ==========================================
preset                   W      R      the seed calls it
=======================  =====  =====  ==========================================
``quorum``               N/2+1  N/2+1  "balanced"
``write_all_read_one``   N      1      "strong"
``write_one_read_all``   1      N      "eventual" — but R+W = N+1 > N: it overlaps
``eventual``             1      1      (truly eventual: R+W <= N for N >= 2)
=======================  =====  =====  ==========================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Final

from multistore.errors import InvalidValueError

__all__ = ["PRESETS", "Consistency", "Level", "QuorumConfig", "home_count", "required"]


class Consistency(enum.Enum):
    """A consistency level that depends on N (Cassandra's names)."""

    ONE = "one"
    QUORUM = "quorum"
    ALL = "all"


Level = Consistency | int
"""A consistency level: a :class:`Consistency` or an explicit replica count."""


def home_count(name: str, value: object, n: int) -> int:
    """``pr``/``pw``: how many of the answers must come from homes, an int in
    ``[0, n]`` (``InvalidValueError`` otherwise)."""
    if type(value) is not int or not 0 <= value <= n:
        raise InvalidValueError(f"{name} must be an int in [0, {n}], got {value!r}")
    return value


def required(level: Level | str, n: int) -> int:
    """How many of ``n`` replicas the level waits for (``InvalidValueError`` if impossible)."""
    if isinstance(level, str):
        text = level
        try:
            level = Consistency(text.lower())
        except ValueError:
            if not text.isdigit():
                raise InvalidValueError(
                    f"unknown consistency level {text!r}; use one, quorum, all or a number"
                ) from None
            level = int(text)
    if level is Consistency.QUORUM:  # per request: no table built, no enum hashed
        return n // 2 + 1
    if level is Consistency.ONE:
        return 1
    if level is Consistency.ALL:
        return n
    if type(level) is not int or not 1 <= level <= n:
        raise InvalidValueError(
            f"a replica count must be an int in [1, {n}] (N={n}), got {level!r}"
        )
    return level


@dataclass(frozen=True, slots=True)
class QuorumConfig:
    """Replication factor ``n``, the default read/write levels of a cluster, and
    whether its quorums are strict or sloppy.

    **Strict** (the default, as Cassandra): only the N nodes of a key's preference
    list (its *homes*) count toward R and W; a home that is down gets a hint, which
    counts for nothing. So R + W > N read and write quorums always overlap.

    **Sloppy** (``sloppy=True``, as Riak): a write whose home is down goes to the next
    node on the ring instead (a *stand-in*), whose acknowledgement counts toward W,
    and a read may count a stand-in's answer toward R. Writes stay available while
    any W nodes of the ring answer, but a read can miss an acknowledged write until
    its hints are delivered, even with R + W > N. ``pr``/``pw`` (0 = off) then say how
    many of the R or W answers must still come from homes.
    """

    n: int = 3
    r: Level = Consistency.QUORUM
    w: Level = Consistency.QUORUM
    pr: int = 0
    pw: int = 0
    sloppy: bool = False

    def __post_init__(self) -> None:
        if type(self.n) is not int or self.n < 1:
            raise InvalidValueError(f"the replication factor N must be an int >= 1, got {self.n!r}")
        required(self.r, self.n)
        required(self.w, self.n)
        home_count("pr", self.pr, self.n)
        home_count("pw", self.pw, self.n)
        if type(self.sloppy) is not bool:
            raise InvalidValueError(f"sloppy must be True or False, got {self.sloppy!r}")

    @property
    def read_count(self) -> int:
        return required(self.r, self.n)

    @property
    def write_count(self) -> int:
        return required(self.w, self.n)

    @property
    def overlapping(self) -> bool:
        """True when every read quorum meets every write quorum (R + W > N)."""
        return self.read_count + self.write_count > self.n

    def warning(self) -> str | None:
        """A sentence explaining the risk when R + W <= N, else None."""
        if self.overlapping:
            return None
        return (
            f"R={self.read_count} + W={self.write_count} <= N={self.n}: a read may miss the "
            "latest acknowledged write (stale reads); use R + W > N for read-your-writes"
        )

    def with_levels(self, *, r: Level | None = None, w: Level | None = None) -> QuorumConfig:
        return replace(self, r=self.r if r is None else r, w=self.w if w is None else w)

    @classmethod
    def preset(cls, name: str, n: int = 3) -> QuorumConfig:
        """One of :data:`PRESETS` for replication factor ``n``."""
        levels = PRESETS.get(name)
        if levels is None:
            raise InvalidValueError(
                f"unknown quorum preset {name!r}; presets are {', '.join(sorted(PRESETS))}"
            )
        return cls(n=n, r=levels[0], w=levels[1])

    def describe(self) -> str:
        overlap = "R+W>N" if self.overlapping else "R+W<=N, stale reads possible"
        kind = ", sloppy" if self.sloppy else ""
        return f"N={self.n} R={self.read_count} W={self.write_count} ({overlap}{kind})"


PRESETS: Final[dict[str, tuple[Consistency, Consistency]]] = {
    "quorum": (Consistency.QUORUM, Consistency.QUORUM),
    "write_all_read_one": (Consistency.ONE, Consistency.ALL),
    "write_one_read_all": (Consistency.ALL, Consistency.ONE),
    "eventual": (Consistency.ONE, Consistency.ONE),
}
"""Preset name -> (R, W); see the module docstring."""
