"""multistore for sync code (Flask, Django, scripts, notebooks).

The same stores as the async API, opened from the same URLs, with the same
semantics: each backend shares its SQL, commands and checks with its async twin.
Embedded backends (SQLite) run each call on the calling thread, with no hop to a
worker thread; server backends use the driver's sync client.

>>> from multistore.sync import open_store  # doctest: +SKIP
>>> with open_store("sqlite:///sessions.db", model="kv") as store:  # doctest: +SKIP
...     store.set("k", "v")

Threads: a sync store may be shared by the threads of a process; each call is
atomic with respect to the store's other calls (embedded backends run one call at
a time under a lock, server backends take a pooled connection per call).
"""

from multistore.consistency._idempotency_sync import SyncIdempotency as Idempotency
from multistore.consistency._idempotency_sync import SyncIdempotentRun as IdempotentRun
from multistore.consistency._idempotency_sync import idempotent
from multistore.consistency._outbox_sync import SyncOutbox as Outbox
from multistore.stores._sync_base import SyncStore as Store
from multistore.stores._sync_registry import SYNC_BACKENDS
from multistore.stores.document._sync_api import SyncDocumentStore as DocumentStore
from multistore.stores.kv import RateLimit
from multistore.stores.kv._sync_api import SyncKeyValueStore as KeyValueStore
from multistore.stores.relational import Migration, Row, TransactionStatus
from multistore.stores.relational._sync_api import SyncConnection as Connection
from multistore.stores.relational._sync_api import SyncRelationalStore as RelationalStore
from multistore.stores.relational._sync_api import SyncTransaction as Transaction
from multistore.stores.timeseries import Point, Window
from multistore.stores.timeseries._sync_api import SyncTimeSeriesStore as TimeSeriesStore
from multistore.stores.widecolumn import ClusteringColumn, Condition, TableSchema
from multistore.stores.widecolumn._sync_api import SyncWideColumnStore as WideColumnStore
from multistore.sync._open import open_store

__all__ = [
    "SYNC_BACKENDS",
    "ClusteringColumn",
    "Condition",
    "Connection",
    "DocumentStore",
    "Idempotency",
    "IdempotentRun",
    "KeyValueStore",
    "Migration",
    "Outbox",
    "Point",
    "RateLimit",
    "RelationalStore",
    "Row",
    "Store",
    "TableSchema",
    "TimeSeriesStore",
    "Transaction",
    "TransactionStatus",
    "WideColumnStore",
    "Window",
    "idempotent",
    "open_store",
]
