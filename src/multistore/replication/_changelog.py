"""The multi-master change log: one change per local write, its wire form and its tables.

A :class:`Change` is one write as it travels between nodes: the key, the
version written (value, HLC timestamp, causal context as a version vector,
origin node) and the origin's sequence number. ``(origin, seq)`` names a change
everywhere, so a node that receives it twice applies it once.

Every node keeps, in its own relational store (SQLite or PostgreSQL):

* ``mm_data`` — each key's state (JSON);
* ``mm_log`` — every change it holds, its own and those it received, in local
  order (``pos``); peers read it from a position, so a node relays what it
  received and a partitioned pair still converges through a third node;
* ``mm_peers`` — per peer: how far this node has applied the peer's log
  (``pulled``, contiguous) and how far the peer acknowledged this node's log
  (``acked``, where pushes resume);
* ``mm_conflicts`` and ``mm_rejected`` — concurrent updates met (with the
  versions that lost) and changes refused by the clock's skew guard;
* ``mm_meta`` — the node id the store belongs to.

The local write, its log row and the position bookkeeping always commit in the
same local transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from multistore.core import HLCTimestamp, Versioned
from multistore.errors import InvalidValueError

__all__ = ["SCHEMA", "Change", "ConflictRecord", "RejectedChange", "dumps", "loads"]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS mm_meta (
    name TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mm_data (
    key TEXT NOT NULL PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mm_log (
    pos BIGINT NOT NULL UNIQUE,
    origin TEXT NOT NULL,
    seq BIGINT NOT NULL,
    key TEXT NOT NULL,
    hlc_ms BIGINT NOT NULL,
    hlc_counter BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (origin, seq)
);
CREATE TABLE IF NOT EXISTS mm_peers (
    peer TEXT NOT NULL PRIMARY KEY,
    pulled BIGINT NOT NULL,
    acked BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS mm_conflicts (
    id BIGINT NOT NULL PRIMARY KEY,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    origin TEXT NOT NULL,
    seq BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mm_rejected (
    origin TEXT NOT NULL,
    seq BIGINT NOT NULL,
    key TEXT NOT NULL,
    skew_ms BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (origin, seq)
)
"""


def dumps(data: object) -> str:
    """Compact, deterministic JSON; :class:`InvalidValueError` for values JSON cannot hold."""
    try:
        return json.dumps(data, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"value is not JSON-safe: {exc}") from None


def loads(text: str) -> Any:
    return json.loads(text)


@dataclass(frozen=True, slots=True)
class Change:
    """One write: ``version`` of ``key``, the ``seq``-th change made at ``origin``.

    Under a CRDT resolver ``version.value`` is the mutation's delta (a CRDT
    state in ``to_dict`` form), otherwise the plain JSON value written.
    """

    origin: str
    seq: int
    key: str
    version: Versioned[Any]

    @property
    def hlc(self) -> HLCTimestamp:
        return self.version.hlc

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "seq": self.seq,
            "key": self.key,
            "version": self.version.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: object) -> Change:
        if not isinstance(data, Mapping) or set(data) != {"origin", "seq", "key", "version"}:
            raise InvalidValueError(f"a change is {{origin, seq, key, version}}, got {data!r}")
        origin, seq, key = data["origin"], data["seq"], data["key"]
        if not isinstance(origin, str) or type(seq) is not int or seq < 1:
            raise InvalidValueError(f"bad change origin/seq: {origin!r}/{seq!r}")
        if not isinstance(key, str):
            raise InvalidValueError(f"a change's key must be a string, got {key!r}")
        version = Versioned.from_dict(data["version"])
        if version.origin != origin:
            raise InvalidValueError(
                f"change {origin}:{seq} carries a version from {version.origin!r}"
            )
        return cls(origin, seq, key, version)


@dataclass(frozen=True, slots=True)
class ConflictRecord:
    """Concurrent versions of ``key`` met when change ``origin:seq`` was applied.

    ``kind`` is ``"lost"`` when versions were discarded (``losers``: LWW, or a
    sibling limit), ``"merged"`` when a merge kept them all, ``"siblings"``
    when they are kept side by side for the application.
    """

    id: int
    key: str
    kind: str
    origin: str
    seq: int
    losers: tuple[Versioned[Any], ...]
    values: tuple[Any, ...]
    """The value(s) current after the change was applied."""


@dataclass(frozen=True, slots=True)
class RejectedChange:
    """A change the skew guard refused: its timestamp was ``skew_ms`` ahead of our clock."""

    change: Change
    skew_ms: int
