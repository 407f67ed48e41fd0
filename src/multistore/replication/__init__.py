"""Replication: primary/replica routing, multi-master, and quorum replication.

**Router.**
:class:`Router` sends writes and transactions to the primary and reads to replicas
picked by a :class:`ReadPolicy`; a write returns a :class:`CausalToken` and a read that
carries it (directly, or through a :class:`Session`) sees that write. It runs over
PostgreSQL streaming replication or, embedded, over SQLite files fed by log shipping.
Tokens carry the primary's :class:`Timeline`; one whose write may have been lost in a
failover raises :class:`ForkedTokenError`, a forged one :class:`InvalidTokenError`
(:class:`TokenSigner` signs them). :class:`PatroniRouter` follows a Patroni cluster
(``PatroniRouter.open_patroni``): Patroni decides failovers, the router adopts the
leader it names. ``replication_status(router)`` reports each node's role, lag and
health.

**Multi-master.** :class:`MultiMasterNode` (a SQLite or PostgreSQL store that logs
each local write with its HLC and dotted version vector in the same transaction;
deletes are tombstones with a causal context) and :class:`Replicator` (each change
pushed once to each peer, relayed after a stall, resumable, idempotent, logs
trimmed once every peer has a change) apply remote changes through a resolver from
:mod:`multistore.core` (LWW, merge function, siblings, CRDTs) and record conflicts;
a change that cannot be applied is set aside, one the skew guard refuses is held
and retried.

**Quorum.** :class:`QuorumCluster` places keys on N of M nodes (Redis servers or
SQLite files) by consistent hashing, with per-request R/W, strict or sloppy quorums,
blocking read repair, hinted handoff (:class:`HintStore`), Merkle anti-entropy
(:func:`anti_entropy`) and membership changes (:class:`MembershipChange`);
:class:`QuorumWideColumnStore` is the distributed wide-column backend
(``quorum://`` URLs).

Builds on :mod:`multistore.stores` and :mod:`multistore.core` only.
"""

from multistore.replication._antientropy import (
    RepairReport,
    anti_entropy,
)
from multistore.replication._changelog import (
    Change,
    ConflictRecord,
    RejectedChange,
)
from multistore.replication._config import Backoff, LogShipping, RouterConfig
from multistore.replication._errors import (
    FailoverError,
    FailoverFailedError,
    ForkedTokenError,
    InvalidTokenError,
)
from multistore.replication._hints import (
    Hint,
    HintStore,
)
from multistore.replication._lag import Health
from multistore.replication._logship import LogShipper
from multistore.replication._mm_report import (
    multimaster_status,
)
from multistore.replication._multimaster import (
    KeyRead,
    MultiMasterNode,
    NodeStatistics,
)
from multistore.replication._nodes import Node, Role, RoutedTransaction, is_read
from multistore.replication._patroni import PatroniRouter, PatroniSource
from multistore.replication._policies import (
    LeastLagPolicy,
    RandomPolicy,
    ReadPolicy,
    ReplicaView,
    RoundRobinPolicy,
)
from multistore.replication._qdetector import (
    ThresholdDetector,
)
from multistore.replication._qmembership import MembershipChange
from multistore.replication._qnodes import (
    QuorumNode,
    SQLiteNode,
)
from multistore.replication._qredis import (
    RedisNode,
)
from multistore.replication._quorum import (
    QuorumCluster,
    QuorumError,
    WeakQuorumWarning,
    coordinator_id,
    quorum_status,
)
from multistore.replication._quorum import ReadResult as QuorumReadResult
from multistore.replication._quorum import WriteResult as QuorumWriteResult
from multistore.replication._qwidecolumn import (
    QuorumWideColumnStore,
)
from multistore.replication._replicator import (
    Envelope,
    Faults,
    MemoryTransport,
    Replicator,
    ReplicatorStatistics,
    Transport,
)
from multistore.replication._router import Router, WriteResult
from multistore.replication._session import Session
from multistore.replication._status import replication_status
from multistore.replication._timeline import Timeline
from multistore.replication._token import CausalToken, TokenSigner

__all__ = [
    "Backoff",
    "CausalToken",
    "Change",
    "ConflictRecord",
    "Envelope",
    "FailoverError",
    "FailoverFailedError",
    "Faults",
    "ForkedTokenError",
    "Health",
    "Hint",
    "HintStore",
    "InvalidTokenError",
    "KeyRead",
    "LeastLagPolicy",
    "LogShipper",
    "LogShipping",
    "MembershipChange",
    "MemoryTransport",
    "MultiMasterNode",
    "Node",
    "NodeStatistics",
    "PatroniRouter",
    "PatroniSource",
    "QuorumCluster",
    "QuorumError",
    "QuorumNode",
    "QuorumReadResult",
    "QuorumWideColumnStore",
    "QuorumWriteResult",
    "RandomPolicy",
    "ReadPolicy",
    "RedisNode",
    "RejectedChange",
    "RepairReport",
    "ReplicaView",
    "Replicator",
    "ReplicatorStatistics",
    "Role",
    "RoundRobinPolicy",
    "RoutedTransaction",
    "Router",
    "RouterConfig",
    "SQLiteNode",
    "Session",
    "ThresholdDetector",
    "Timeline",
    "TokenSigner",
    "Transport",
    "WeakQuorumWarning",
    "WriteResult",
    "anti_entropy",
    "coordinator_id",
    "is_read",
    "multimaster_status",
    "quorum_status",
    "replication_status",
]
