"""Consistency across stores: idempotency keys, durable sagas, and two-phase commit.

Idempotency: :class:`Idempotency` (over a key-value or relational store) gives
``Idempotency-Key`` semantics — per-client scope, payload fingerprint, 409 while the
first run holds a live lease, 422 on reuse with another payload, the stored result
replayed after — as a decorator (:func:`idempotent`) or ASGI middleware
(:class:`IdempotencyMiddleware`).

Sagas: :class:`Saga` of :class:`Step` s with compensations, run by a
:class:`SagaEngine` over a durable log in a relational store; crash recovery, retries
(:class:`RetryPolicy`), a ``stuck`` state for operators (:func:`list_sagas`), and a
:class:`SagaWorker` that runs enqueued and abandoned sagas until stopped.

Two-phase commit: :class:`TransactionCoordinator` runs a :class:`DistributedTransaction`
over named participants (PostgreSQL ``PREPARE TRANSACTION``, MariaDB ``XA``, SQLite
write intents, Redis staged write-sets) with a durable :class:`DecisionLog` (by default
the config's ``transactions`` role, :func:`default_log`) that names every branch and
holds each coordinator's node id as a lease (:class:`NodeBusyError` for a second
holder); :func:`recover_transactions` (and :meth:`TransactionCoordinator.recover`, also
run in the background) resolve the in-doubt branches a crash leaves behind. Failures
are definite (:class:`TransactionAbortedError`) or indeterminate
(:class:`TransactionIndeterminateError`); contradicting outcomes are reported as
:class:`HeuristicOutcome` (a branch that cannot be applied as prepared:
:class:`BranchHazardError`).

Outbox: :meth:`Outbox.add` writes an event in the caller's transaction (atomic with
the business write); an :class:`OutboxRelay` delivers the events at least once, in
order per aggregate, with leases for several relays and parking after its retries;
an :class:`Inbox` (or :func:`deduplicated`) makes a consumer process each event once.
:class:`EtcdLeases` ties relays' and saga workers' claims to etcd leases.
:class:`JetStreamDestination` relays events to NATS JetStream (deduplicated by event id)
and :func:`consume_jetstream` feeds a durable JetStream consumer into an inbox.
"""

from multistore.consistency._etcd_leases import DEFAULT_ETCD_TTL, EtcdLeases
from multistore.consistency._idempotency import (
    DEFAULT_POLICY,
    Idempotency,
    IdempotencyPolicy,
    IdempotentRun,
    check_idempotency_key,
    current_run,
    fingerprint,
    idempotent,
)
from multistore.consistency._idempotency_asgi import (
    IdempotencyMiddleware,
    client_from_principal,
)
from multistore.consistency._idempotency_backends import (
    IdempotencyRecord,
)
from multistore.consistency._inbox import Inbox, deduplicated
from multistore.consistency._outbox import Outbox, OutboxEvent, OutboxRecord
from multistore.consistency._outbox_nats import JetStreamDestination, consume_jetstream
from multistore.consistency._outbox_relay import OUTBOX_RETRY, OutboxRelay, RelayStatistics
from multistore.consistency._retry import (
    COMPENSATION_RETRY,
    DEFAULT_RETRY,
    RETRIABLE_ERRORS,
    RetryPolicy,
    default_retriable,
)
from multistore.consistency._saga import (
    ErrorInfo,
    Parallel,
    Saga,
    SagaResult,
    Step,
    StepContext,
)
from multistore.consistency._saga_engine import (
    DEFAULT_LEASE,
    SagaEngine,
)
from multistore.consistency._saga_log import (
    SagaLog,
    list_sagas,
    show_saga,
)
from multistore.consistency._saga_worker import SagaWorker, WorkerStatistics
from multistore.consistency._tpc_coordinator import (
    DistributedTransaction,
    EventHook,
    TransactionCoordinator,
)
from multistore.consistency._tpc_errors import (
    BranchHazardError,
    HeuristicOutcome,
    TransactionAbortedError,
    TransactionHeuristicError,
    TransactionIndeterminateError,
)
from multistore.consistency._tpc_log import DecisionLog, LogRecord, default_log
from multistore.consistency._tpc_nodes import NodeBusyError
from multistore.consistency._tpc_participants import (
    Branch,
    Participant,
    SQLBranch,
    open_participant,
)
from multistore.consistency._tpc_recovery import (
    RecoveryReport,
    recover_once,
    recover_transactions,
)

__all__ = [
    "COMPENSATION_RETRY",
    "DEFAULT_ETCD_TTL",
    "DEFAULT_LEASE",
    "DEFAULT_POLICY",
    "DEFAULT_RETRY",
    "OUTBOX_RETRY",
    "RETRIABLE_ERRORS",
    "Branch",
    "BranchHazardError",
    "DecisionLog",
    "DistributedTransaction",
    "ErrorInfo",
    "EtcdLeases",
    "EventHook",
    "HeuristicOutcome",
    "Idempotency",
    "IdempotencyMiddleware",
    "IdempotencyPolicy",
    "IdempotencyRecord",
    "IdempotentRun",
    "Inbox",
    "JetStreamDestination",
    "LogRecord",
    "NodeBusyError",
    "Outbox",
    "OutboxEvent",
    "OutboxRecord",
    "OutboxRelay",
    "Parallel",
    "Participant",
    "RecoveryReport",
    "RelayStatistics",
    "RetryPolicy",
    "SQLBranch",
    "Saga",
    "SagaEngine",
    "SagaLog",
    "SagaResult",
    "SagaWorker",
    "Step",
    "StepContext",
    "TransactionAbortedError",
    "TransactionCoordinator",
    "TransactionHeuristicError",
    "TransactionIndeterminateError",
    "WorkerStatistics",
    "check_idempotency_key",
    "client_from_principal",
    "consume_jetstream",
    "current_run",
    "deduplicated",
    "default_log",
    "default_retriable",
    "fingerprint",
    "idempotent",
    "list_sagas",
    "open_participant",
    "recover_once",
    "recover_transactions",
    "show_saga",
]
