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
* Versions and conflicts: :class:`Versioned` (a delete's value is :data:`DELETED`),
  :class:`SiblingSet`, and the
  resolvers :class:`LWW`, :class:`MergeFunction` (:func:`merge_carts`),
  :class:`KeepSiblings`, :class:`CRDTResolver`.
* State machines: the saga (:class:`SagaState`, :func:`next_move`) and two-phase
  commit (``_tpc``).
* Quorum: the hash ring (:class:`HashRing`), quorum arithmetic
  (:class:`QuorumConfig`, :data:`PRESETS`), Merkle trees (:class:`MerkleTree`).
* History checking: Jepsen-shaped events (:class:`Event`), stale reads, lost writes,
  monotonic reads, and per-key linearizability (:func:`check_history`).
"""

from multistore.core._causal import CausalContext
from multistore.core._checkers import (
    DEFAULT_STALENESS_EDGES_MS,
    LostWrite,
    MonotonicViolation,
    StalenessBucket,
    StaleRead,
    find_lost_writes,
    find_monotonic_violations,
    find_phantom_reads,
    find_stale_reads,
    latency_summary,
    staleness_curve,
)
from multistore.core._counters import GCounter, PNCounter
from multistore.core._crdt import CRDT, crdt_from_bytes, crdt_from_dict
from multistore.core._history import (
    NEVER,
    Event,
    EventType,
    Operation,
    check_unique_writes,
    pair_operations,
)
from multistore.core._history_report import (
    HistoryReport,
    check_history,
)
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
from multistore.core._linearizability import (
    DEFAULT_SEARCH_BOUND,
    LinearizabilityResult,
    Verdict,
    check_linearizable,
    check_register,
)
from multistore.core._maps import Cart, ORMap
from multistore.core._merkle import (
    MerkleTree,
    leaf_hash,
    leaf_of,
)
from multistore.core._quorum import (
    PRESETS,
    Consistency,
    QuorumConfig,
    required,
)
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
from multistore.core._ring import (
    RING_SIZE,
    Arc,
    HashRing,
    token_of,
)
from multistore.core._saga import (
    UNFINISHED_STATES,
    Abort,
    Compensate,
    Finish,
    Halt,
    Move,
    RunStep,
    SagaRecord,
    SagaState,
    SagaTransitionError,
    StepRecord,
    StepState,
    next_move,
)
from multistore.core._sets import ORSet
from multistore.core._siblings import (
    DELETED,
    Siblings,
    SiblingSet,
    SiblingWrite,
    Tombstone,
    Versioned,
)
from multistore.core._tpc import (
    XA_FORMAT_ID,
    XID_PREFIX,
    Decision,
    TxState,
    Vote,
    Xid,
    decide,
    needs_decision_log,
    phase_two_targets,
    resolve_in_doubt,
)
from multistore.core._vv import Dot, DottedVersionVector, Ordering, VersionVector

__all__ = [
    "CRDT",
    "DEFAULT_SEARCH_BOUND",
    "DEFAULT_STALENESS_EDGES_MS",
    "DELETED",
    "LWW",
    "MAX_COUNTER",
    "MAX_PHYSICAL_MS",
    "NEVER",
    "PRESETS",
    "RING_SIZE",
    "UNFINISHED_STATES",
    "XA_FORMAT_ID",
    "XID_PREFIX",
    "Abort",
    "Arc",
    "CRDTResolver",
    "Cart",
    "CausalContext",
    "ClockSkewError",
    "ClockStatistics",
    "ClockUpdate",
    "Compensate",
    "Consistency",
    "Decision",
    "Dot",
    "DottedVersionVector",
    "Event",
    "EventType",
    "Finish",
    "GCounter",
    "HLCTimestamp",
    "Halt",
    "HashRing",
    "HistoryReport",
    "HybridClock",
    "KeepSiblings",
    "LWWRegister",
    "LinearizabilityResult",
    "LostWrite",
    "MVRegister",
    "MergeFunction",
    "MerkleTree",
    "MonotonicViolation",
    "Move",
    "ORMap",
    "ORSet",
    "Operation",
    "Ordering",
    "PNCounter",
    "QuorumConfig",
    "Resolution",
    "Resolver",
    "RunStep",
    "SagaRecord",
    "SagaState",
    "SagaTransitionError",
    "SiblingSet",
    "SiblingWrite",
    "Siblings",
    "SkewPolicy",
    "StaleRead",
    "StalenessBucket",
    "StepRecord",
    "StepState",
    "Tombstone",
    "TxState",
    "Verdict",
    "VersionVector",
    "Versioned",
    "Vote",
    "Xid",
    "check_history",
    "check_linearizable",
    "check_register",
    "check_unique_writes",
    "crdt_from_bytes",
    "crdt_from_dict",
    "decide",
    "find_lost_writes",
    "find_monotonic_violations",
    "find_phantom_reads",
    "find_stale_reads",
    "latency_summary",
    "leaf_hash",
    "leaf_of",
    "merge_carts",
    "needs_decision_log",
    "next_move",
    "pair_operations",
    "phase_two_targets",
    "required",
    "resolve_in_doubt",
    "staleness_curve",
    "token_of",
]
