"""The multi-master change log: one change per local write, its wire form and its tables.

A :class:`Change` is one write as it travels between nodes: the key, the
version written (value or delete, HLC timestamp, causal history, origin node)
and the origin's sequence number. ``(origin, seq)`` names a change everywhere;
each origin numbers its changes 1, 2, 3, ... without gaps, and a node takes a
peer's changes of one origin strictly in that order, so "what I have of
origin *o*" is one number and re-deliveries are recognised without a lookup.

Every node keeps, in its own relational store (SQLite or PostgreSQL):

* ``mm_data`` — each key's state (JSON);
* ``mm_log`` — the changes it has taken, its own and those it received (which
  it relays), in local order (``pos``), until every peer has them;
* ``mm_origins`` — per origin: how far this node has taken its changes
  (contiguous);
* ``mm_peer_has`` — per peer: what the peer last said it has (a version vector
  of origin sequence numbers); the log is trimmed below what every peer has;
* ``mm_pending`` — changes taken but not applied yet: held back by the clock's
  skew guard, or waiting behind such a change to the same key from the same
  origin;
* ``mm_conflicts`` — concurrent updates met (with the versions that lost),
  merges that failed, and changes set aside because they could not be applied;
* ``mm_meta`` — the node id the store belongs to, and the clock and log head as
  of the last trim or received batch (the log itself may be trimmed empty).

A local write, its log row and the bookkeeping always commit in one local
transaction, and so does every batch of received changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from multistore.core import HLCTimestamp, Versioned, VersionVector
from multistore.errors import InvalidValueError

__all__ = [
    "SCHEMA",
    "Change",
    "ConflictRecord",
    "RejectedChange",
    "coalesce",
    "decode_vv",
    "dumps",
    "is_stub",
    "loads",
]

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
CREATE TABLE IF NOT EXISTS mm_origins (
    origin TEXT NOT NULL PRIMARY KEY,
    received BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS mm_peer_has (
    peer TEXT NOT NULL PRIMARY KEY,
    has TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mm_pending (
    origin TEXT NOT NULL,
    seq BIGINT NOT NULL,
    key TEXT NOT NULL,
    skew_ms BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (origin, seq)
);
CREATE TABLE IF NOT EXISTS mm_conflicts (
    id BIGINT NOT NULL PRIMARY KEY,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    origin TEXT NOT NULL,
    seq BIGINT NOT NULL,
    body TEXT NOT NULL
)
"""


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False)


def dumps(data: object) -> str:
    """Compact, deterministic JSON; :class:`InvalidValueError` for values JSON cannot hold."""
    try:
        return _ENCODER.encode(data)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"value is not JSON-safe: {exc}") from None


def loads(text: str) -> Any:
    return json.loads(text)


def is_stub(item: object) -> bool:
    """True for the wire form of a superseded change (see :func:`coalesce`)."""
    return isinstance(item, Mapping) and item.get("superseded") is True


def coalesce(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``changes`` (wire form, each origin's in sequence order) with every change that a
    later change of the same origin to the same key supersedes replaced by a stub
    ``{"origin", "seq", "key", "superseded": true}``.

    The later change's history covers the earlier one's, so taking it alone leaves a
    key exactly as taking both would; the stub keeps the sequence numbers whole. Only
    for plain values: a CRDT delta never supersedes another.
    """
    result = list(changes)
    later: dict[tuple[str, str], Mapping[str, Any]] = {}
    for i in range(len(result) - 1, -1, -1):
        item = result[i]
        try:
            origin, key, version = item["origin"], item["key"], item["version"]
            counter = version["vv"][origin]
        except (KeyError, TypeError):
            continue  # a stub, or a body this node could not read: sent as it is
        newer = later.get((origin, key))
        later[(origin, key)] = version
        if newer is None:
            continue
        past = newer.get("past")
        if past is None or (isinstance(past, Mapping) and past.get(origin, 0) >= counter):
            result[i] = {"origin": origin, "seq": item["seq"], "key": key, "superseded": True}
    return result


def decode_vv(data: object) -> VersionVector:
    """A version vector of origin sequence numbers from its JSON form (``{}`` for None)."""
    return VersionVector() if data is None else VersionVector.from_dict(data)


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
    """What happened to ``key`` when change ``origin:seq`` was made or applied.

    ``kind`` is ``"lost"`` when concurrent versions were discarded (``losers``:
    LWW, or a sibling limit), ``"merged"`` when a merge kept them all,
    ``"siblings"`` when they are kept side by side for the application,
    ``"unresolved"`` when the resolver (a merge function) raised on them — the
    siblings are kept and shown as they are, ``error`` says why — and
    ``"set_aside"`` when the change itself could not be applied (``error``): the
    key kept its state and replication went on.
    """

    id: int
    key: str
    kind: str
    origin: str
    seq: int
    losers: tuple[Versioned[Any], ...]
    values: tuple[Any, ...]
    """The value(s) current after the change was applied."""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RejectedChange:
    """A change the skew guard holds back: its timestamp was ``skew_ms`` ahead of our clock
    when last tried (0 for a change waiting behind a held-back change to the same key)."""

    change: Change
    skew_ms: int
