"""Timelines: which causal tokens a failover leaves valid. Pure: no I/O.

Every promotion starts a new timeline. Its history names, for each ancestor timeline,
the position where that ancestor ended and its successor forked off (PostgreSQL keeps
this in the ``.history`` file of each timeline; the embedded change log in the
``multistore_timeline`` table). Log positions of an ancestor up to its end are shared
with every descendant; past it, the ancestor's log (on the old primary) and the
descendant's log name different writes. So a token ``(t, p)`` can be satisfied on
timeline ``T`` when ``t == T``, or when ``t`` is an ancestor of ``T`` and ``p`` is at or
before the position where ``t`` ended. Otherwise its write may have been lost in the
failover, and the router says so instead of serving a read that would not see it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from multistore.replication._errors import ForkedTokenError, InvalidTokenError
from multistore.replication._token import CausalToken, format_lsn

__all__ = ["Timeline"]


@dataclass(frozen=True)
class Timeline:
    """The primary's current timeline and where each of its ancestors ended."""

    id: int
    ends: Mapping[int, int] = field(default_factory=dict)
    """Ancestor timeline -> the log position where it ended (the fork point)."""
    lsn: bool = False
    """Positions are PostgreSQL LSNs (printed as ``X/Y`` in messages)."""

    def contains(self, timeline: int, position: int) -> bool:
        """True when ``position`` of ``timeline`` is part of this history."""
        if timeline == self.id:
            return True
        end = self.ends.get(timeline)
        return end is not None and position <= end

    def check(self, token: CausalToken) -> None:
        """Raise unless some node of this timeline can satisfy ``token``:
        :class:`ForkedTokenError` past a fork, :class:`InvalidTokenError` for a
        timeline this history does not know."""
        if token.timeline > self.id:
            raise InvalidTokenError(
                f"causal token {token.unsigned} comes from timeline {token.timeline}, but "
                f"the primary is on timeline {self.id}: it was issued by another cluster, "
                "by a router that failed over to a primary this router does not use, or "
                "it was forged"
            )
        if self.contains(token.timeline, token.position):
            return
        end = self.ends.get(token.timeline)
        where = (
            f"timeline {token.timeline} ended at {self._show(end)}"
            if end is not None
            else f"timeline {token.timeline} is not an ancestor of timeline {self.id}"
        )
        raise ForkedTokenError(
            f"the write of causal token {token.unsigned} (position "
            f"{self._show(token.position)}) may have been lost in a failover: {where} "
            f"when the current timeline {self.id} forked off, and positions past that "
            "name other writes now; the read was not run"
        )

    def _show(self, position: int) -> str:
        return format_lsn(position) if self.lsn else str(position)
