"""The pure core: clocks, version vectors, CRDTs and conflict resolvers, with no I/O.

Nothing in this package reads the time, touches a file or a socket, or imports
another part of multistore except :mod:`multistore.errors` (a test enforces it):
time comes in through injected callables, and everything is a value or a
small state machine that the replication layer drives.

* Clocks: :class:`HLCTimestamp`, :class:`HybridClock` (with the skew guard,
  :class:`ClockSkewError`), :class:`VersionVector`, :class:`Dot`,
  :class:`DottedVersionVector`.
* CRDTs (state-based, with deltas): :class:`GCounter`, :class:`PNCounter`,
  :class:`LWWRegister`, :class:`MVRegister`, :class:`ORSet`, :class:`ORMap`,
  :class:`Cart`.
* Versions and conflicts: :class:`Versioned`, :class:`SiblingSet`, and the
  resolvers :class:`LWW`, :class:`MergeFunction` (:func:`merge_carts`),
  :class:`KeepSiblings`, :class:`CRDTResolver`.
"""

from multistore.core._causal import CausalContext
from multistore.core._counters import GCounter, PNCounter
from multistore.core._crdt import CRDT, crdt_from_dict
from multistore.core._hlc import (
    MAX_COUNTER,
    MAX_PHYSICAL_MS,
    ClockSkewError,
    ClockStatistics,
    ClockUpdate,
    HLCTimestamp,
    HybridClock,
    SkewPolicy,
)
from multistore.core._maps import Cart, ORMap
from multistore.core._registers import LWWRegister, MVRegister
from multistore.core._resolvers import (
    LWW,
    CRDTResolver,
    KeepSiblings,
    MergeFunction,
    Resolution,
    Resolver,
    merge_carts,
)
from multistore.core._sets import ORSet
from multistore.core._siblings import Siblings, SiblingSet, SiblingWrite, Versioned
from multistore.core._vv import Dot, DottedVersionVector, Ordering, VersionVector

__all__ = [
    "CRDT",
    "LWW",
    "MAX_COUNTER",
    "MAX_PHYSICAL_MS",
    "CRDTResolver",
    "Cart",
    "CausalContext",
    "ClockSkewError",
    "ClockStatistics",
    "ClockUpdate",
    "Dot",
    "DottedVersionVector",
    "GCounter",
    "HLCTimestamp",
    "HybridClock",
    "KeepSiblings",
    "LWWRegister",
    "MVRegister",
    "MergeFunction",
    "ORMap",
    "ORSet",
    "Ordering",
    "PNCounter",
    "Resolution",
    "Resolver",
    "SiblingSet",
    "SiblingWrite",
    "Siblings",
    "SkewPolicy",
    "VersionVector",
    "Versioned",
    "crdt_from_dict",
    "merge_carts",
]
